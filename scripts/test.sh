#!/usr/bin/env bash
# Runs every test of xdpgate on a Debian 12 machine as root, installing what
# is missing first. The README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/usr/local/go/bin:$PATH
exec make test
