#!/usr/bin/env bash
# Runs the xdpgate demo on a Debian 12 machine as root, installing what is
# missing first. The README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/usr/local/go/bin:$PATH
exec make demo
