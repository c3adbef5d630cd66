#!/usr/bin/env bash
# boot.sh LABEL: boot the kernel fetched for LABEL (fetch-kernel.sh) with
# the initramfs (build-initramfs.sh) plus its modules under qemu, and
# wait for the guest to power off. The console goes to
# .vm/logs/LABEL.console, the test results to .vm/logs/LABEL.results.
#
# VM_ACCEL=auto|kvm|tcg   accelerator (auto: KVM when /dev/kvm works)
# VM_TIMEOUT=SECONDS      kill the guest after this long (default: 300 with
#                         KVM, 900 with TCG)
# VM_MEM, VM_SMP          guest memory and CPUs (default 1G, 2)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

label=${1:?usage: boot.sh LABEL}
kdir=$VM_CACHE/kernels/$label
base=$VM_CACHE/initramfs/base.cpio
[ -s "$kdir/vmlinuz" ] || vm_die "kernel $label not fetched: scripts/vm/fetch-kernel.sh $label"
[ -s "$base" ] || vm_die "no initramfs: scripts/vm/build-initramfs.sh"

accel=${VM_ACCEL_ARGS:-$(vm_accel)}
case $accel in
*kvm*) timeout=${VM_TIMEOUT:-300} ;;
*) timeout=${VM_TIMEOUT:-900} ;;
esac

# The per-kernel archive: modules, and the settings run-suites.sh reads.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/modules" "$stage/vm"
cp "$kdir"/modules/* "$stage/modules/"
{
	printf 'export XDPGATE_TEST_ARGS=%q\n' "${XDPGATE_TEST_ARGS:-}"
	printf 'export XDPGATE_SUITE_TIMEOUT=%q\n' "${XDPGATE_SUITE_TIMEOUT:-8m}"
} >"$stage/vm/env"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -H newc -0 -R 0:0) >"$kdir/extra.cpio"
cat "$base" "$kdir/extra.cpio" >"$kdir/initrd"

mkdir -p "$VM_LOGS"
console=$VM_LOGS/$label.console
results=$VM_LOGS/$label.results
rm -f "$console" "$results"

vm_log "$label: booting $(cat "$kdir/release") ($accel, timeout ${timeout}s)"
start=$(date +%s)
rc=0
# shellcheck disable=SC2086 # $accel is a list of arguments
timeout -k 10 "$timeout" qemu-system-x86_64 \
	-nodefaults -no-user-config -display none -no-reboot \
	-machine pc $accel -m "${VM_MEM:-1G}" -smp "${VM_SMP:-2}" \
	-kernel "$kdir/vmlinuz" -initrd "$kdir/initrd" \
	-append "console=ttyS0 panic=-1 quiet random.trust_cpu=on" \
	-serial "file:$console" -serial "file:$results" </dev/null || rc=$?
secs=$(($(date +%s) - start))
case $rc in
0) vm_log "$label: guest powered off after ${secs}s" ;;
124 | 137) vm_log "$label: guest killed after ${secs}s (VM_TIMEOUT=$timeout)" ;;
*) vm_log "$label: qemu exited with $rc after ${secs}s" ;;
esac
printf '@@xdpgate boot rc=%s secs=%s\n' "$rc" "$secs" >>"$results"
rm -f "$kdir/initrd" "$kdir/extra.cpio"
