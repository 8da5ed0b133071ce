#!/bin/sh
# FreeBSD boot smoke test for xbb.ko: boots a FreeBSD kernel under QEMU with
# a tiny root image (our own /sbin/init from init.c and xbb.ko), lets init
# load, check, unload and reload the module, and reads the verdict from the
# serial console.  See tests/freebsd/README.md.
#
#   FREEBSD_KERNEL=/path/to/kernel sh tests/freebsd/run.sh
#
# Environment:
#   FREEBSD_KERNEL  an amd64 FreeBSD kernel with a Xen PVH entry note (options
#                   XENHVM), virtio_blk and CD9660.  Not set: SKIP, exit 0.
#   XBB_KO          a built xbb.ko to test.  Default: build one with
#                   scripts/kmod.sh ko when FREEBSD_SRC is set (KERNBUILDDIR,
#                   if set, reaches bmake and gives the kernel's options), or
#                   else use $KMOD_BUILD/obj/xbb.ko if it exists.
#   FREEBSD_SRC     a FreeBSD 15 tree for building xbb.ko (scripts/kmod.sh).
#   SMOKE_DIR       work and results directory, default <repo>/target/freebsd-smoke.
#   SMOKE_TUNABLES  hw.xbb.* settings for the kernel command line, default
#                   "hw.xbb.max_queues=2 hw.xbb.max_ring_page_order=9" (the
#                   second is out of range: the module must keep the default
#                   and say so on the console).
#   SMOKE_TIMEOUT   seconds before the guest is killed, default 180.
#   SMOKE_MANPAGE   the manual the expectations come from, default man/xbb.4.
#   SMOKE_ACCEL     QEMU accelerator, default tcg (a FreeBSD PVH boot under
#                   KVM stopped in fpuinit with "KVM internal error" here).
#   QEMU, CC, LD    default qemu-system-x86_64, clang-14 (or clang), ld.lld-14
#                   (or ld.lld).
#
# Exit status: 0 when every check passed (or SKIP), 1 when a check failed or
# the guest never reported, 2 when the harness itself cannot run.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

. "$repo/scripts/lib.sh"
require_kernel smoke "the FreeBSD boot smoke test needs" tests/freebsd/README.md

missing=
: "${QEMU:=$(first_tool qemu-system-x86_64 || true)}"
[ -n "$QEMU" ] || missing="$missing qemu-system-x86"
init_tools
command -v timeout >/dev/null 2>&1 || missing="$missing coreutils"
if [ -n "$missing" ]; then
	echo "smoke: missing tools; Debian: apt-get install$missing" >&2
	exit 2
fi

: "${SMOKE_DIR:=$repo/target/freebsd-smoke}"
: "${SMOKE_TUNABLES:=hw.xbb.max_queues=2 hw.xbb.max_ring_page_order=9}"
: "${SMOKE_TIMEOUT:=180}"
: "${SMOKE_ACCEL:=tcg}"
init_dirs "$SMOKE_DIR"
results=$SMOKE_DIR/results
rm -rf "$results"
mkdir -p "$results"

now() { date +%s; }
t_start=$(now)

# 1. xbb.ko
if [ -n "${XBB_KO:-}" ]; then
	ko=$XBB_KO
elif [ -n "${FREEBSD_SRC:-}" ]; then
	echo "smoke: building xbb.ko against $FREEBSD_SRC (scripts/kmod.sh ko)"
	sh "$repo/scripts/kmod.sh" ko >"$results/kmod.log" 2>&1 || {
		tail -n 30 "$results/kmod.log" >&2
		echo "smoke: xbb.ko build failed (log: $results/kmod.log)" >&2
		exit 1
	}
	ko=${KMOD_BUILD:-$repo/target/kmod}/obj/xbb.ko
else
	ko=${KMOD_BUILD:-$repo/target/kmod}/obj/xbb.ko
fi
if [ ! -f "$ko" ]; then
	echo "smoke: no xbb.ko at $ko: set XBB_KO, or FREEBSD_SRC to build one" >&2
	exit 2
fi
t_ko=$(now)

# 2. /sbin/init, with the expectations generated from the man page.
# shellcheck disable=SC2086
sh "$here/gen-expect.sh" "${SMOKE_MANPAGE:-$repo/man/xbb.4}" "$(freebsd_version)" \
    $SMOKE_TUNABLES >"$build/xbb_expect.h"
build_init "$here/init.c" -I"$build"

# 3. The root image: cd9660 with Rock Ridge (modes), /dev for devfs.
cp "$ko" "$root/boot/modules/xbb.ko"
"$XORRISO" -as mkisofs -quiet -R -V XBBSMOKE -o "$build/root.iso" "$root" \
    >"$results/xorriso.log" 2>&1 || {
	cat "$results/xorriso.log" >&2
	exit 2
}
t_img=$(now)

# 4. Boot.  The PVH entry takes the command line as kernel environment
# (name=value words), which is where the hw.xbb.* tunables come from.
log=$results/console.log
# A panic reboots at once (no debugger prompt), which ends QEMU (-no-reboot).
append="vfs.root.mountfrom=cd9660:/dev/vtbd0 debug.debugger_on_panic=0"
append="$append debug.trace_on_panic=1 kern.panic_reboot_wait_time=0 $SMOKE_TUNABLES"
echo "smoke: booting $FREEBSD_KERNEL ($SMOKE_ACCEL, timeout ${SMOKE_TIMEOUT}s)"
echo "smoke: -append \"$append\""
set +e
# One emulated host at a time (see tests/xenlab/README.md, XENLAB_LOCK).
exec 9>"${XENLAB_LOCK:-/tmp/xbb-emulator.lock}"
flock -n 9 || { echo "smoke: another emulated host runs; waiting"; flock 9; }
timeout -k 10 "$SMOKE_TIMEOUT" "$QEMU" -machine q35 -accel "$SMOKE_ACCEL" \
    -cpu max -smp 2 -m 512 -display none -monitor none -no-reboot \
    -serial "file:$log" \
    -kernel "$FREEBSD_KERNEL" -append "$append" \
    -drive "file=$build/root.iso,format=raw,if=virtio,readonly=on" \
    </dev/null >"$results/qemu.log" 2>&1
qrc=$?
exec 9>&-
set -e
t_boot=$(now)

# 5. Verdict.
tr -d '\r' 2>/dev/null <"$log" >"$results/console.txt" || : >"$results/console.txt"
grep '^XBB-SMOKE: ' "$results/console.txt" >"$results/report.txt" || :
npass=$(grep -c '^XBB-SMOKE: ok ' "$results/report.txt" || :)
nfail=$(grep -c '^XBB-SMOKE: FAIL ' "$results/report.txt" || :)
done_line=$(grep '^XBB-SMOKE: done ' "$results/report.txt" | tail -n 1 || :)
uname=$(grep -m 1 '^FreeBSD [0-9]' "$results/console.txt" || :)
problems=0

# The console messages the man page promises for out-of-range tunables:
# "a value outside the accepted range is ignored with a message".
ignored=$(sed -n 's|^/\* ignored: \(.*\) \*/$|\1|p' "$build/xbb_expect.h")
for kv in $ignored; do
	name=${kv%%=*}
	value=${kv#*=}
	if grep -q "xbb: hw.xbb.$name=$value outside" "$results/console.txt"; then
		echo "XBB-SMOKE: ok console says hw.xbb.$name=$value is ignored" >>"$results/report.txt"
		npass=$((npass + 1))
	else
		echo "XBB-SMOKE: FAIL console: no message for the out-of-range hw.xbb.$name=$value" >>"$results/report.txt"
		nfail=$((nfail + 1))
	fi
done

{
	echo "FreeBSD boot smoke test of xbb.ko"
	echo "kernel:   $FREEBSD_KERNEL"
	echo "uname:    ${uname:-(no FreeBSD banner on the console)}"
	echo "module:   $ko"
	echo "append:   $append"
	echo "accel:    $SMOKE_ACCEL; qemu exit status $qrc"
	echo "timings:  module $((t_ko - t_start)) s, init+image $((t_img - t_ko)) s," \
	    "boot to power-off $((t_boot - t_img)) s"
	echo "in guest: ${done_line:-no final line}"
	echo "checks:   $npass passed, $nfail failed"
	grep '^XBB-SMOKE: FAIL ' "$results/report.txt" || :
	if grep -q -e '^panic:' -e 'Fatal trap' "$results/console.txt"; then
		echo "kernel panic:"
		grep -A 12 -e '^panic:' -e 'Fatal trap' "$results/console.txt" | head -n 30
	fi
	# What the kernel linker and the module said on the console.
	grep -v '^XBB-SMOKE: ' "$results/console.txt" | grep -e '^KLD ' \
	    -e '^link_elf' -e '^linker_load_file' -e 'undefined' \
	    -e 'unexpected relocation' -e '^xbb' | sed 's/^/console:  /' || :
} >"$results/summary.txt"

if [ -z "$done_line" ]; then
	echo "the guest never printed its final line (timeout or crash)" >>"$results/summary.txt"
	problems=1
elif [ "$qrc" -ne 0 ]; then
	echo "qemu did not exit cleanly after power-off (status $qrc)" >>"$results/summary.txt"
	problems=1
fi
if [ "$qrc" -ne 0 ] && [ -s "$results/qemu.log" ]; then
	{ echo "qemu said:"; tail -n 15 "$results/qemu.log"; } >>"$results/summary.txt"
fi
[ "$nfail" -eq 0 ] || problems=1
[ "$npass" -gt 0 ] || problems=1

cat "$results/summary.txt"
echo "results:  $results (console.txt, report.txt, summary.txt)"
if [ "$problems" -ne 0 ]; then
	echo "FAIL: FreeBSD boot smoke test"
	exit 1
fi
echo "PASS: FreeBSD boot smoke test"
