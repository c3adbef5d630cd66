# syntax=docker/dockerfile:1
#
# One image, two static binaries: xdpgate (the node agent, the entry point)
# and edgesync (the Cloudflare sync, run by the CronJob with its own
# command). The BPF object is prebuilt and committed (bpf/*_bpfel.o, made by
# `make generate`), so the build needs no clang. Little-endian targets only.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t ghcr.io/xdpgate/xdpgate:0.1.0 .

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags='-s -w' \
      -o /out/ ./cmd/xdpgate ./cmd/edgesync

# Static, no shell, no package manager.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/xdpgate /out/edgesync /usr/local/bin/
# Root: the agent loads BPF and programs nftables, with the capabilities the
# DaemonSet grants. The edgesync CronJob runs as 65532 (distroless's
# "nonroot") with runAsNonRoot and no capabilities.
USER 0:0
ENTRYPOINT ["/usr/local/bin/xdpgate"]
CMD ["run", "-c", "/etc/xdpgate/xdpgate.yaml"]
