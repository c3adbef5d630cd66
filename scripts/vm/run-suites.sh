#!/bin/sh
# run-suites.sh BINDIR PLAN: run the test binaries of PLAN (see
# scripts/vm/plan) from BINDIR as root under CI=true, so that nothing
# skips, and print their verbose output framed for report.awk:
#
#	@@xdpgate kernel RELEASE
#	@@xdpgate begin SUITE
#	... go test -v output ...
#	@@xdpgate end SUITE rc=N secs=N
#	@@xdpgate done
#
# The same script runs in the guest (busybox sh) and on the host.
# XDPGATE_TEST_ARGS adds arguments to every binary (e.g. -test.short);
# XDPGATE_SUITE_TIMEOUT bounds each binary (default 8m).
set -u
bindir=$1
plan=$2

echo "@@xdpgate kernel $(uname -r)"
grep -v '^[[:space:]]*#' "$plan" | grep -v '^[[:space:]]*$' | while read -r name _ pattern; do
	echo "@@xdpgate begin $name"
	start=$(date +%s)
	# shellcheck disable=SC2086 # XDPGATE_TEST_ARGS is a list of arguments
	CI=true "$bindir/$name.test" -test.v -test.count=1 \
		-test.timeout "${XDPGATE_SUITE_TIMEOUT:-8m}" \
		-test.run "$pattern" ${XDPGATE_TEST_ARGS:-} </dev/null 2>&1
	rc=$?
	echo "@@xdpgate end $name rc=$rc secs=$(($(date +%s) - start))"
done
echo "@@xdpgate done"
