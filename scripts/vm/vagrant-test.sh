#!/usr/bin/env bash
# vagrant-test.sh: `make test` in each box of the Vagrantfile, one after
# the other (vagrant up NAME --provision), then a table box -> kernel ->
# PASS/FAIL with the packages that failed. Exits non-zero when any box
# fails. Needs Vagrant and a hypervisor it can drive (VirtualBox, or
# libvirt with the vagrant-libvirt plugin).
#
# VAGRANT_BOXES="bookworm jammy noble"  the boxes to run
# VAGRANT_AFTER=halt|destroy|keep       what to do with a box afterwards (halt)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

"$VM_SCRIPTS/deps.sh" vagrant
cd "$VM_ROOT"

if [ -z "${VAGRANT_DEFAULT_PROVIDER:-}" ] && ! command -v VBoxManage >/dev/null &&
	! { command -v virsh >/dev/null && vagrant plugin list 2>/dev/null | grep -q vagrant-libvirt; }; then
	vm_die "no hypervisor for Vagrant: install VirtualBox, or libvirt with the vagrant-libvirt plugin (or set VAGRANT_DEFAULT_PROVIDER)"
fi

read -r -a boxes <<<"${VAGRANT_BOXES:-bookworm jammy noble}"
mkdir -p "$VM_LOGS"
start=$(date +%s)
rc=0
rows=()
for b in "${boxes[@]}"; do
	log=$VM_LOGS/vagrant-$b.log
	vm_log "$b: vagrant up --provision (log: ${log#"$VM_ROOT"/})"
	t=$(date +%s)
	brc=0
	vagrant up "$b" --provision 2>&1 | tee "$log" || brc=$?
	secs=$(($(date +%s) - t))
	# The provisioner prints "xdpgate: make test on DISTRO, kernel RELEASE".
	kernel=$(sed -n 's/.*xdpgate: make test on .*, kernel \([^[:space:]]*\).*/\1/p' "$log" | tail -1)
	failed=$(sed -n 's/^[[:space:]]*[a-z]*: FAIL[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' "$log" | sort -u | tr '\n' ' ' | sed 's/ $//')
	nok=$(grep -cE '^[[:space:]]*[a-z]+: ok[[:space:]]' "$log" || true)
	verdict=PASS
	if [ "$brc" -ne 0 ] || [ -n "$failed" ]; then
		verdict=FAIL
		rc=1
	fi
	rows+=("$(printf '%-10s %-28s %-5s %5ss  %s packages ok%s' "$b" "${kernel:-?}" "$verdict" "$secs" "$nok" "${failed:+; failed: $failed}")")
	case ${VAGRANT_AFTER:-halt} in
	halt) vagrant halt "$b" >/dev/null 2>&1 || true ;;
	destroy) vagrant destroy -f "$b" >/dev/null 2>&1 || true ;;
	esac
done

echo
printf '%-10s %-28s %-5s %6s  %s\n' box kernel result time packages
printf '%s\n' "${rows[@]}"
echo "vagrant matrix: $([ $rc -eq 0 ] && echo PASS || echo FAIL) in $(($(date +%s) - start))s"
exit $rc
