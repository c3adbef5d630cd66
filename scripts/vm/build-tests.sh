#!/usr/bin/env bash
# build-tests.sh: compile the test binaries of scripts/vm/plan into
# .vm/bin as static executables (CGO_ENABLED=0), so they run in the
# busybox guest as well as on the host. GO names the go command.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

go=${GO:-go}
command -v "$go" >/dev/null || go=/usr/local/go/bin/go
rm -rf "$VM_BIN"
mkdir -p "$VM_BIN"
grep -v '^[[:space:]]*#' "$VM_PLAN" | grep -v '^[[:space:]]*$' | while read -r name pkg _; do
	vm_log "go test -c $pkg"
	(cd "$VM_ROOT" && CGO_ENABLED=0 "$go" test -c -trimpath -ldflags='-s -w' -o "$VM_BIN/$name.test" "$pkg")
done
