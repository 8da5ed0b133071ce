#!/bin/bash
# crash-scan.sh RESULTS SERIAL: every sign that a process, a kernel or a
# domain crashed during a xenlab run, one line each, "where: what".
#
# Looks at the Xen/dom0 serial console (SERIAL, CRs removed), dom0's
# dmesg, every guest console, the xbb-serve log, the checkers' logs, what
# xl printed (the hotplug scripts' errors: block, block-xbb) and xl's own
# logs, the logs of QEMU's qdisk, of qemu-nbd and of udevd, what
# xbb-dispatch wrote under udev, and xbbwork's checks in dom0, all in
# RESULTS; and lists the core dumps in RESULTS/cores. Exit status 0 when
# nothing was found, 1 otherwise.
set -u
results=$1
serial=$2

# What a crash leaves behind:
# - Linux on a killed process: "segfault at", "general protection fault",
#   "traps: ...", "trap invalid opcode"; bash and busybox for a child:
#   "Segmentation fault", "Illegal instruction", "Bus error", "Aborted";
# - glibc's consistency checks: "malloc(): ...", "free(): ...", "double
#   free", "corrupted ...", ld.so's "Inconsistency detected", assert();
# - a shell whose memory was corrupted: awk's "invalid field index", or
#   the scenario script failing on words it never wrote ("command not
#   found", "integer expression expected", "syntax error");
# - kernels and domains: "Kernel panic", "BUG:", "Oops", Xen's "Triple
#   fault", FreeBSD's "Fatal trap" and "panic:";
# - our own: xbb-serve's fatal-signal report, vcheck and dom0check.
re='segfault at|general protection|traps: |trap invalid opcode|Segmentation fault|Illegal instruction|Bus error|Aborted|core dumped|malloc\(\)|free\(\)|double free|corrupted (double-linked|size|top|unsorted)|Inconsistency detected|Assertion .* failed|invalid field index|stack smashing|command not found|integer expression expected|syntax error|Kernel panic|BUG: |Oops|Triple fault|Fatal trap|: panic: |xbb-serve: fatal signal|VCHECK FAIL|DOM0CHECK FAIL'

{
	[ -f "$serial" ] && sed 's/^/serial: /' "$serial"
	for f in "$results"/dom0-dmesg.txt "$results"/guest-*.log "$results"/xbb-serve.log \
		"$results"/dom0check.txt "$results"/vcheck-*.txt \
		"$results"/xl-*.txt "$results"/xl-*.log "$results"/qemu-dm-*.log \
		"$results"/qemu-nbd-*.txt "$results"/udevd-*.txt "$results"/dispatch-stderr.txt \
		"$results"/xbbwork-*.txt; do
		[ -f "$f" ] || continue
		tr -d '\r' < "$f" | sed "s|^|$(basename "$f"): |"
	done
} | grep -a -E "$re" | cut -c1-300 | awk '!seen[$0]++' > "$results/crashes.txt"
for c in "$results"/cores/core.*; do
	[ -f "$c" ] || continue
	case "$c" in *.bt.txt) continue ;; esac
	echo "core dump: $(basename "$c")" >> "$results/crashes.txt"
done
cat "$results/crashes.txt"
[ ! -s "$results/crashes.txt" ]
