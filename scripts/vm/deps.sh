#!/usr/bin/env bash
# deps.sh [vm|vagrant]: install what `make test-vm` (vm, the default) or
# `make vagrant-test` (vagrant) needs on a Debian or Ubuntu host, as root.
# Idempotent: installs only what is missing, and runs apt-get update only
# when a package cannot be installed without it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

case ${1:-vm} in
vm) pkgs=(qemu-system-x86 busybox-static cpio xz-utils zstd iproute2 debian-archive-keyring) ;;
vagrant) pkgs=(vagrant rsync) ;;
*) vm_die "usage: deps.sh [vm|vagrant]" ;;
esac

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
[ "$(id -u)" -eq 0 ] || vm_die "missing ${missing[*]}: run as root to install them"
vm_log "apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
