#!/usr/bin/env bash
# fetch-kernel.sh LABEL: fetch a kernel of scripts/vm/kernels with apt-get
# download and unpack what a test boot needs into .vm/kernels/LABEL:
#
#	vmlinuz          the kernel
#	release          its uname -r
#	package          the Debian package and version it came from
#	modules/*.ko     VM_MODULES (default: veth bridge) and their
#	                 dependencies, decompressed (busybox insmod reads
#	                 plain .ko only)
#	modules/order    the order to insmod them in
#
# Cached: nothing is downloaded while the newest build of the package is
# the one already unpacked. The package lists are refreshed once a day.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

label=${1:?usage: fetch-kernel.sh LABEL}
read -r suite meta < <(vm_kernel_entry "$label") || vm_die "kernel $label is not in scripts/vm/kernels"
modules=${VM_MODULES:-veth bridge}
out=$VM_CACHE/kernels/$label

vm_apt_setup "$suite"
fresh=$(find "$VM_APT/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -1)
if [ -z "$fresh" ]; then
	if ! vm_apt_update; then
		if [ -s "$out/package" ]; then
			vm_log "$label: apt-get update failed; using the cached $(cat "$out/package")"
			exit 0
		fi
		vm_die "$label: apt-get update failed"
	fi
fi

pkg=$(vm_apt apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
[ -n "$pkg" ] || vm_die "$label: $meta has no linux-image dependency in $suite"
ver=$(vm_apt apt-cache show --no-all-versions "$pkg" | awk '/^Version:/ { print $2; exit }')
want="$pkg $ver modules: $modules"
if [ "$(cat "$out/package" 2>/dev/null)" = "$want" ] && [ -s "$out/vmlinuz" ]; then
	vm_log "$label: $pkg $ver (cached)"
	exit 0
fi

debs=$VM_CACHE/debs
mkdir -p "$debs"
deb=$debs/${pkg}_${ver//:/%3a}_amd64.deb
if [ ! -s "$deb" ]; then
	vm_log "$label: apt-get download $pkg=$ver"
	if ! (cd "$debs" && vm_apt apt-get -qq download "$pkg=$ver"); then
		vm_apt_update
		(cd "$debs" && vm_apt apt-get -qq download "$pkg=$ver")
	fi
	[ -s "$deb" ] || vm_die "$label: apt-get download did not write ${deb#"$VM_ROOT"/}"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
vmlinuzes=("$tmp"/boot/vmlinuz-*)
vmlinuz=${vmlinuzes[0]}
[ -f "$vmlinuz" ] || vm_die "$label: no /boot/vmlinuz-* in $pkg"
release=${vmlinuz##*/vmlinuz-}
moddir=$tmp/lib/modules/$release
[ -d "$moddir" ] || moddir=$tmp/usr/lib/modules/$release

rm -rf "$out.new"
mkdir -p "$out.new/modules"
cp "$vmlinuz" "$out.new/vmlinuz"
printf '%s\n' "$release" >"$out.new/release"
: >"$out.new/modules/order"

# name -> path of every module in the package; '-' and '_' are the same.
declare -A path
while IFS= read -r f; do
	n=${f##*/}
	n=${n%%.ko*}
	path[${n//-/_}]=$f
done < <(find "$moddir" -name '*.ko*')

builtin() { grep -q "/$1\.ko\$" "$moddir/modules.builtin" 2>/dev/null || grep -q "/${1//_/-}\.ko\$" "$moddir/modules.builtin" 2>/dev/null; }

declare -A seen
resolve() {
	local m=${1//-/_} f ko dep
	[ -z "${seen[$m]:-}" ] || return 0
	seen[$m]=1
	f=${path[$m]:-}
	if [ -z "$f" ]; then
		builtin "$m" && return 0
		vm_die "$label: module $m is neither built in nor in $pkg"
	fi
	ko=$out.new/modules/$m.ko
	case $f in
	*.ko.xz) xz -dc "$f" >"$ko" ;;
	*.ko.zst) zstd -qdc "$f" >"$ko" ;;
	*.ko.gz) gzip -dc "$f" >"$ko" ;;
	*) cp "$f" "$ko" ;;
	esac
	for dep in $(tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -1 | tr ',' ' '); do
		resolve "$dep"
	done
	printf '%s\n' "$m" >>"$out.new/modules/order"
}
for m in $modules; do
	resolve "$m"
done

printf '%s\n' "$want" >"$out.new/package"
rm -rf "$out"
mv "$out.new" "$out"
rm -f "$deb"
vm_log "$label: $pkg $ver, kernel $release, modules: $(paste -sd ' ' "$out/modules/order")"
