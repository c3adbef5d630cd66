#!/usr/bin/env bash
# Installs what building and testing xdpgate needs on Debian 12 (and, for
# the Vagrant boxes, Ubuntu 22.04 and 24.04), as root.
# Idempotent: it installs only what is missing, and runs apt-get update only
# when a package cannot be found.
set -euo pipefail

GO_VERSION=1.26.8
PKGS=(make gcc git clang llvm libbpf-dev nftables iproute2 iputils-ping procps ca-certificates unzip)
# bpftool is its own package on Debian; Ubuntu ships it with the kernel's
# tools, per kernel version.
distro=$(. /etc/os-release 2>/dev/null && echo "${ID:-debian}")
case $distro in
ubuntu) PKGS+=(linux-tools-common "linux-tools-$(uname -r)") ;;
*) PKGS+=(bpftool) ;;
esac

log() { printf 'install-deps: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: must run as root (apt-get, BPF, network namespaces)" >&2
	exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	log "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -qq
		apt-get install -y -qq "${missing[@]}"
	}
fi

# Go: the module needs Go ${GO_VERSION}. Debian 12 ships 1.19, which is only
# used to fetch the real toolchain, published as the module
# golang.org/toolchain through the Go module proxy.
have_go() {
	local v
	v=$("$1" env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	[ "$(printf '%s\n%s\n' "$GO_VERSION" "$v" | sort -V | head -1)" = "$GO_VERSION" ]
}
if have_go /usr/local/go/bin/go; then
	:
elif command -v go >/dev/null && have_go "$(command -v go)"; then
	:
else
	log "installing Go ${GO_VERSION} from the module proxy"
	if ! command -v go >/dev/null; then
		apt-get install -y -qq golang-go >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq golang-go; }
	fi
	arch=$(dpkg --print-architecture)
	tmp=$(mktemp -d)
	(
		cd "$tmp"
		printf 'module fetch\n\ngo 1.19\n' >go.mod
		GOFLAGS=-mod=mod GOMODCACHE="$tmp/cache" go mod download -json "golang.org/toolchain@v0.0.1-go${GO_VERSION}.linux-${arch}" >dl.json
	)
	zip=$(sed -n 's/.*"Zip": "\(.*\)".*/\1/p' "$tmp/dl.json")
	rm -rf /usr/local/go "$tmp/x"
	mkdir -p "$tmp/x"
	unzip -q "$zip" -d "$tmp/x"
	mv "$tmp/x/golang.org/toolchain@v0.0.1-go${GO_VERSION}.linux-${arch}" /usr/local/go
	chmod -R u+w "$tmp" && rm -rf "$tmp"
	log "Go installed at /usr/local/go: $(/usr/local/go/bin/go version)"
fi

# A real CrowdSec Local API for the tests and the demo.
"$(dirname "$0")/install-crowdsec.sh"

# bpffs, where the agent pins its program and maps.
if ! mountpoint -q /sys/fs/bpf; then
	log "mounting bpffs at /sys/fs/bpf"
	mount -t bpf bpf /sys/fs/bpf
fi
