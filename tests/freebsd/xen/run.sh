#!/bin/sh
# xbb.ko in a real Xen host: a FreeBSD PVH guest as driver domain serving a
# Linux guest's disks (scenario 7), and the FreeBSD front-end served from
# dom0 (scenario 8), inside the xenlab harness (tests/xenlab); on request
# xl save/restore and a pvgrub2 boot with xbb.ko (scenario 15).  See README.md.
#
#   FREEBSD_KERNEL=/path/to/kernel sh tests/freebsd/xen/run.sh [--scenarios 7,8,15]
#
# Environment:
#   FREEBSD_KERNEL  amd64 FreeBSD kernel with a PVH entry (XENHVM, xenpci),
#                   md, tmpfs, cd9660, without the built-in blkback.  Not
#                   set: SKIP, exit 0.
#   XBB_KO          a built xbb.ko; default: scripts/kmod.sh ko when
#                   FREEBSD_SRC is set (KERNBUILDDIR reaches bmake), else
#                   $KMOD_BUILD/obj/xbb.ko.
#   FREEBSD_SRC     FreeBSD 15 tree for building xbb.ko.
#   XBBD_KO         FreeBSD's own blkback as a module, xbbd.ko, for the
#                   driver domain's "load xbbd" command (dd-init.c); default:
#                   scripts/xbbd-kmod.sh builds it from FREEBSD_SRC when
#                   KERNBUILDDIR is set too.  Without one, the root image has
#                   no xbbd.ko (nothing of FreeBSD is ever committed).
#   FBSD_DD_DIR     work directory, default <repo>/target/freebsd-xen.
#   XENLAB_RUN      the xenlab driver, default tests/xenlab/run.sh (it must
#                   support XENLAB_EXTRA_DIR, see README.md).
#   CC, LD          default clang-14 (or clang), ld.lld-14 (or ld.lld).
#   XENLAB_FBSD_XL  more xl.cfg lines for the FreeBSD guests, separated by
#                   ';' (e.g. "hap = 0": shadow paging instead of the
#                   emulated CPU's nested paging; see README.md).
# Everything else (XENLAB_DIR, XENLAB_STANDIN, XENLAB_CPU, XENLAB_QEMU=7.2|
# backports for the emulator, ...) goes to the xenlab run.
# Exit status: that of the xenlab run; 0 for SKIP; 2 when this part cannot
# be set up.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)

. "$repo/scripts/lib.sh"
require_kernel fbsd-xen "the FreeBSD driver-domain scenarios need" \
    tests/freebsd/xen/README.md

missing=
init_tools
if [ -n "$missing" ]; then
	echo "fbsd-xen: missing tools; Debian: apt-get install$missing" >&2
	exit 2
fi

: "${FBSD_DD_DIR:=$repo/target/freebsd-xen}"
: "${XENLAB_RUN:=$repo/tests/xenlab/run.sh}"
init_dirs "$FBSD_DD_DIR"
extra=$FBSD_DD_DIR/extra
rm -rf "$extra"
mkdir -p "$root/mnt" "$extra"

# 1. xbb.ko
if [ -n "${XBB_KO:-}" ]; then
	ko=$XBB_KO
else
	if [ -n "${FREEBSD_SRC:-}" ]; then
		echo "fbsd-xen: building xbb.ko against $FREEBSD_SRC (scripts/kmod.sh ko)"
		# kmod.sh names its own cargo target directory.
		env -u CARGO_TARGET_DIR sh "$repo/scripts/kmod.sh" ko >"$build/kmod.log" 2>&1 || {
			tail -n 30 "$build/kmod.log" >&2
			echo "fbsd-xen: xbb.ko build failed (log: $build/kmod.log)" >&2
			exit 2
		}
	fi
	ko=${KMOD_BUILD:-$repo/target/kmod}/obj/xbb.ko
fi
if [ ! -f "$ko" ]; then
	echo "fbsd-xen: no xbb.ko at $ko: set XBB_KO, or FREEBSD_SRC to build one" >&2
	exit 2
fi

# 1b. xbbd.ko, FreeBSD's own blkback built from the user's tree (optional:
# only a comparison needs it).  xbbd-kmod.sh exits 3 when it skips.
xbbd_ko=
if [ -n "${XBBD_KO:-}" ]; then
	xbbd_ko=$XBBD_KO
	[ -f "$xbbd_ko" ] || { echo "fbsd-xen: XBBD_KO=$xbbd_ko is not a file" >&2; exit 2; }
else
	rc=0
	XBBD_SKIP_STATUS=3 sh "$repo/scripts/xbbd-kmod.sh" >"$build/xbbd-kmod.log" 2>&1 || rc=$?
	case $rc in
	0) xbbd_ko=${XBBD_BUILD:-$repo/target/xbbd}/xbbd.ko ;;
	3) echo "fbsd-xen: no xbbd.ko: $(grep SKIP "$build/xbbd-kmod.log")" ;;
	*)
		tail -n 15 "$build/xbbd-kmod.log" >&2
		echo "fbsd-xen: warning: xbbd.ko build failed (log: $build/xbbd-kmod.log);" \
		    "the root image has none" >&2
		;;
	esac
fi

# 2. /sbin/init of the FreeBSD guest, and its cd9660 root.
build_init "$here/dd-init.c" -mgeneral-regs-only \
    -DXBB_FREEBSD_VERSION_STR="\"$(freebsd_version)\""
cp "$ko" "$root/boot/modules/xbb.ko"
[ -z "$xbbd_ko" ] || cp "$xbbd_ko" "$root/boot/modules/xbbd.ko"
"$XORRISO" -as mkisofs -quiet -R -V XBBDD -o "$extra/fbsd-root.iso" "$root" \
    >"$build/xorriso.log" 2>&1 || {
	cat "$build/xorriso.log" >&2
	exit 2
}

# 3. What goes into dom0 (/xenlab-extra): the kernel, the root image and
# the scenario functions.
cp "$FREEBSD_KERNEL" "$extra/fbsd-kernel"
cp "$here/dom0-fbsd.sh" "$extra/dom0-fbsd.sh"
printf '%s\n' "${XENLAB_FBSD_XL:-}" | tr ';' '\n' | sed 's/^ *//' | grep -v '^$' > "$extra/fbsd-xl.cfg" || :
echo "fbsd-xen: kernel $FREEBSD_KERNEL, module $ko${xbbd_ko:+, blkback as $xbbd_ko}, dom0 extras in $extra"

# 4. The xenlab run with scenarios 7 and 8 (unless told otherwise), with
# room for two FreeBSD boots and five Linux guests.
case " $* " in
*" --scenarios"*) ;;
*) set -- --scenarios 7,8 "$@" ;;
esac
# Scenario 15 (on request: --scenarios 15, or 7,8,15) boots the driver
# domain again, saves and restores a guest three times and boots one with
# pvgrub2 (about 6 min more); scenario 16 (--scenarios 16) runs nine bench
# guests (about 12 min).
case " $* " in
*" --timeout"*) ;;
*" --scenarios"*1[56]* | *" --scenarios="*1[56]*) set -- --timeout 3300 "$@" ;;
*) set -- --timeout 1800 "$@" ;;
esac
XENLAB_EXTRA_DIR=$extra
# Xen on one emulated CPU: the FreeBSD PVH guests run on the emulated SVM,
# and with two CPUs they die now and then of what the emulation loses
# (triple faults, a lost kernel GS base); ../../xenlab/README.md, "The
# FreeBSD PVH domains", has the runs.
: "${XENLAB_SMP:=1}"
export XENLAB_EXTRA_DIR XENLAB_SMP
exec "$XENLAB_RUN" "$@"
