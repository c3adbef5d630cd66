# shellcheck shell=bash disable=SC2034
# Shared by the scripts in scripts/vm: paths, logging, the private apt
# configuration the kernel packages are fetched with. Sourced, not run.

VM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VM_SCRIPTS=$VM_ROOT/scripts/vm
VM_CACHE=${VM_CACHE:-$VM_ROOT/.vm}
VM_BIN=$VM_CACHE/bin          # test binaries, rebuilt every run
VM_LOGS=$VM_CACHE/logs        # console and result logs, one pair per kernel
VM_PLAN=${VM_PLAN:-$VM_SCRIPTS/plan} # which test binaries run, with which -test.run

vm_log() { printf 'vm: %s\n' "$*" >&2; }
vm_die() {
	printf 'vm: error: %s\n' "$*" >&2
	exit 1
}

# vm_kernel_entry LABEL prints "SUITE PACKAGE" for a label of scripts/vm/kernels.
vm_kernel_entry() {
	awk -v l="$1" '$1 == l && $1 !~ /^#/ { print $2, $3; found = 1 } END { exit !found }' "$VM_SCRIPTS/kernels"
}

# vm_kernel_labels prints every label of scripts/vm/kernels, in order.
vm_kernel_labels() {
	awk '!/^[[:space:]]*(#|$)/ { print $1 }' "$VM_SCRIPTS/kernels"
}

# The kernel packages come from Debian's security archive through a private
# apt configuration per suite under $VM_CACHE/apt/SUITE: the host's own apt
# sources and state are neither read nor changed, so any suite can be
# fetched from any Debian or Ubuntu host. The archive's address is taken
# from the host's apt sources (its debian-security entry) unless
# VM_DEBIAN_SECURITY names it.

vm_security_mirror() {
	if [ -n "${VM_DEBIAN_SECURITY:-}" ]; then
		printf '%s\n' "${VM_DEBIAN_SECURITY%/}"
		return
	fi
	local uri
	# shellcheck disable=SC2016 # $(REPO_URI) is apt's, not the shell's
	uri=$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -m1 '/debian-security/*$' || true)
	if [ -z "$uri" ]; then
		vm_die "no debian-security source in the host's apt configuration: set VM_DEBIAN_SECURITY to the Debian security archive's URL"
	fi
	printf '%s\n' "${uri%/}"
}

# vm_apt_setup SUITE selects (and creates) the private apt state of SUITE.
vm_apt_setup() {
	local suite=$1 mirror want keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	[ -r "$keyring" ] || vm_die "$keyring missing (package debian-archive-keyring)"
	mirror=$(vm_security_mirror)
	VM_APT=$VM_CACHE/apt/$suite
	mkdir -p "$VM_APT"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
	: >"$VM_APT/preferences"
	touch "$VM_APT/status"
	want=$(printf 'deb [signed-by=%s] %s %s main' "$keyring" "$mirror" "$suite")
	if [ "$(cat "$VM_APT/sources.list" 2>/dev/null)" != "$want" ]; then
		printf '%s\n' "$want" >"$VM_APT/sources.list"
		find "$VM_APT/lists" -maxdepth 1 -type f -delete
	fi
}

vm_apt_opts() {
	printf '%s\n' \
		-o "Dir::Etc::SourceList=$VM_APT/sources.list" \
		-o "Dir::Etc::SourceParts=$VM_APT/sources.list.d" \
		-o "Dir::Etc::Preferences=$VM_APT/preferences" \
		-o "Dir::Etc::PreferencesParts=$VM_APT/preferences.d" \
		-o "Dir::State::Lists=$VM_APT/lists" \
		-o "Dir::State::status=$VM_APT/status" \
		-o "Dir::Cache=$VM_APT/cache" \
		-o "APT::Sandbox::User=root" \
		-o "Debug::NoLocking=1"
}

vm_apt_update() {
	vm_log "apt-get update (private lists in ${VM_APT#"$VM_ROOT"/})"
	vm_apt apt-get -qq update
}

# vm_apt CMD ARGS... runs apt-get or apt-cache on the selected suite.
vm_apt() {
	local opts
	mapfile -t opts < <(vm_apt_opts)
	"$1" "${opts[@]}" "${@:2}"
}

# vm_accel prints the qemu arguments for the accelerator: KVM when the
# CPU has hardware virtualization (vmx or svm) and /dev/kvm opens, else
# software emulation (TCG). A /dev/kvm without vmx/svm (such as the
# kvm_pvm module's, which runs only guest kernels built for it) does not
# boot Debian's kernels. VM_ACCEL=kvm|tcg forces one.
vm_accel() {
	local want=${VM_ACCEL:-auto}
	if [ "$want" = auto ]; then
		want=tcg
		if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo &&
			echo quit | timeout 20 qemu-system-x86_64 -accel kvm -machine none \
				-nodefaults -display none -monitor stdio >/dev/null 2>&1; then
			want=kvm
		fi
	fi
	case $want in
	kvm) echo "-accel kvm -cpu host" ;;
	tcg) echo "-accel tcg,thread=multi -cpu max" ;;
	*) vm_die "VM_ACCEL=$want: want auto, kvm or tcg" ;;
	esac
}
