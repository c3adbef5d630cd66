#!/usr/bin/env bash
# matrix.sh: the kernel matrix of `make test-vm`. Builds the kernel test
# binaries of scripts/vm/plan, runs them on the host's kernel, then boots
# each kernel of scripts/vm/kernels under qemu with them in its initramfs,
# and prints the table test x kernel -> PASS/FAIL/SKIP (also written to
# .vm/results.txt). Exits non-zero when any kernel fails.
#
# VM_KERNELS="5.10 6.1 6.12 host"   the columns, in order (default: every
#                                   kernel of scripts/vm/kernels, then host)
# VM_ACCEL, VM_TIMEOUT, VM_MEM, VM_SMP  see boot.sh
# XDPGATE_TEST_ARGS                 extra arguments for every test binary
# XDPGATE_SUITE_TIMEOUT             -test.timeout of each binary (8m)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" -eq 0 ] || vm_die "run as root: the tests load BPF programs and create network namespaces"
start=$(date +%s)
"$VM_SCRIPTS/deps.sh" vm

read -r -a labels <<<"${VM_KERNELS:-$(vm_kernel_labels | tr '\n' ' ') host}"
mkdir -p "$VM_LOGS"
for l in "${labels[@]}"; do rm -f "$VM_LOGS/$l.results" "$VM_LOGS/$l.console"; done

t=$(date +%s)
"$VM_SCRIPTS/build-tests.sh"
vm_log "test binaries built in $(($(date +%s) - t))s"
# The tests every kernel must run, so that one that never ran shows.
grep -v '^[[:space:]]*#' "$VM_PLAN" | grep -v '^[[:space:]]*$' | while read -r name _ pattern; do
	"$VM_BIN/$name.test" -test.list "$pattern" | grep -E '^(Test|Fuzz|Example)' | sed "s/^/$name /"
done >"$VM_LOGS/expected"

# The host first: it takes seconds and shows a broken build at once.
for l in "${labels[@]}"; do
	[ "$l" = host ] || continue
	vm_log "host: running the plan on $(uname -r)"
	mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	t=$(date +%s)
	tmp=$(mktemp -d)
	(cd "$tmp" && sh "$VM_SCRIPTS/run-suites.sh" "$VM_BIN" "$VM_PLAN") >"$VM_LOGS/host.results" 2>&1 || true
	rmdir "$tmp" 2>/dev/null || true
	echo "@@xdpgate secs $(($(date +%s) - t))" >>"$VM_LOGS/host.results"
	vm_log "host: done in $(($(date +%s) - t))s"
done

vms=()
for l in "${labels[@]}"; do [ "$l" = host ] || vms+=("$l"); done
if [ ${#vms[@]} -gt 0 ]; then
	"$VM_SCRIPTS/build-initramfs.sh"
	accel=$(vm_accel)
	for l in "${vms[@]}"; do
		if ! "$VM_SCRIPTS/fetch-kernel.sh" "$l"; then
			echo "@@xdpgate fetch failed" >"$VM_LOGS/$l.results"
			continue
		fi
		VM_ACCEL_ARGS=$accel "$VM_SCRIPTS/boot.sh" "$l" || true
	done
fi

files=("$VM_LOGS/expected")
for l in "${labels[@]}"; do files+=("$VM_LOGS/$l.results"); done
rc=0
awk -f "$VM_SCRIPTS/report.awk" "${files[@]}" >"$VM_CACHE/results.txt" || rc=$?
echo
cat "$VM_CACHE/results.txt"
echo "kernel matrix: $([ $rc -eq 0 ] && echo PASS || echo FAIL) in $(($(date +%s) - start))s (logs in ${VM_LOGS#"$VM_ROOT"/})"
exit $rc
