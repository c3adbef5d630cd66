# xdpgate — run `make help` for the targets.

GO         ?= go
GOFLAGS    ?=
# Debian keeps asm/ headers under the multiarch directory; clang -target bpf
# does not look there by itself.
BPF_CFLAGS ?= -I/usr/include/$(shell gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)
export BPF_CFLAGS
TEST_TIMEOUT ?= 25m

.DEFAULT_GOAL := help

# Targets of their own files: the kernel matrix, the fleet load test, the
# live drop benchmark.
-include vm.mk fleet.mk live.mk

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install build and test dependencies (Debian 12, root; idempotent).
	scripts/install-deps.sh

.PHONY: generate
generate: ## Regenerate the bpf2go bindings and objects from bpf/*.c.
	$(GO) generate ./bpf/...

.PHONY: check-generate
check-generate: generate ## Fail if the committed bpf2go output is stale.
	@if ! git diff --quiet -- bpf/ || [ -n "$$(git status --porcelain -- bpf/)" ]; then \
		echo "bpf2go output is stale: run 'make generate' and commit the result" >&2; \
		git status --short -- bpf/ >&2; exit 1; fi
	@echo "bpf2go output is up to date"

.PHONY: build
build: ## Build xdpgate and edgesync into ./bin.
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./cmd/...

.PHONY: vet
vet: ## go vet and gofmt.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed" >&2; exit 1; }
	$(GO) vet ./...

.PHONY: test
test: check-generate vet ## Run every test: unit, kernel (BPF, XDP, veth, nftables) and real-LAPI tests.
	$(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./...

.PHONY: e2e
e2e: ## Run the end-to-end test (LAPI, xdpgate, DNAT to a pod, edgesync, fake Cloudflare) and print its timeline (root).
	$(GO) test -count=1 -v -run TestEndToEnd ./e2e/

.PHONY: bench
bench: ## Run the benchmarks and print their comparison tables.
	$(GO) test -run '^$$' -bench . -benchtime 2000000x -timeout 30m ./bpf/
	$(GO) test -run '^$$' -bench . -timeout 30m $$($(GO) list ./... | grep -v '/bpf$$')

.PHONY: clean
clean: ## Remove build output.
	rm -rf bin

.PHONY: demo
demo: build ## Run the demo: a real LAPI, a client netns, a ban enforced in XDP, then undone.
	BIN=bin/xdpgate scripts/demo-run.sh
