#!/usr/bin/env bash
# build-initramfs.sh: build the kernel-independent part of the guest's
# initramfs, .vm/initramfs/base.cpio, from the test binaries in .vm/bin:
#
#	/init                 scripts/vm/init (busybox sh)
#	/bin/busybox          busybox-static; init installs the applets
#	/usr/local/sbin/ip    the host's iproute2 ip with its shared libraries:
#	                      the tests need ip netns, which busybox ip lacks
#	/vm/run-suites.sh     runs the plan, the same script as on the host
#	/vm/plan, /vm/bin/    the plan and the test binaries
#
# boot.sh appends a second archive per kernel with its modules.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

out=$VM_CACHE/initramfs
root=$out/root
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/sbin,lib64,proc,sys,dev,tmp,run,root,etc/netns,vm/bin,modules}
mknod -m 600 "$root/dev/console" c 5 1
mkdir -p "$root/var"
ln -s ../run "$root/var/run"

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || vm_die "busybox missing (package busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
	vm_die "$busybox is dynamically linked: install busybox-static"
fi
cp "$busybox" "$root/bin/busybox"

# ip and everything it loads, at the same paths as on the host.
ip=$(command -v ip || true)
[ -n "$ip" ] || vm_die "ip missing (package iproute2)"
cp -L "$ip" "$root/usr/local/sbin/ip"
ldd "$ip" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u |
	while read -r lib; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done

install -m 0755 "$VM_SCRIPTS/init" "$root/init"
install -m 0755 "$VM_SCRIPTS/run-suites.sh" "$root/vm/run-suites.sh"
install -m 0644 "$VM_PLAN" "$root/vm/plan"
for f in "$VM_BIN"/*.test; do
	[ -e "$f" ] || vm_die "no test binaries in ${VM_BIN#"$VM_ROOT"/}"
	cp "$f" "$root/vm/bin/"
done

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -H newc -0 -R 0:0) >"$out/base.cpio"
vm_log "initramfs: ${out#"$VM_ROOT"/}/base.cpio, $(du -m "$out/base.cpio" | cut -f1) MiB"
