#!/usr/bin/env bash
# Runs every test of xdpgate on a Debian 12 machine as root, installing what
# is missing first: `make test` (unit, kernel, nftables, real-LAPI and
# end-to-end tests on this kernel), then `make test-vm` (the kernel tests
# on Debian's 5.10, 6.1 and 6.12 kernels under qemu). The README's test
# command; .ci/run calls it. XDPGATE_SKIP_VM=1 leaves the kernel matrix
# out (for a quick local run; CI never sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/usr/local/go/bin:$PATH
make test
if [ "${XDPGATE_SKIP_VM:-}" = 1 ] && [ "${CI:-}" != true ]; then
	echo "test.sh: kernel matrix skipped (XDPGATE_SKIP_VM=1)"
	exit 0
fi
make test-vm
