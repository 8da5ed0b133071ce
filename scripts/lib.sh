# Shell helpers shared by the build and test scripts (POSIX sh; sourced,
# never run): scripts/kmod.sh, scripts/xbbd-kmod.sh, scripts/check-kernel-objects.sh,
# tests/freebsd/run.sh and tests/freebsd/xen/run.sh.

# first_tool NAME...: prints the path of the first of the named programs
# that is installed; fails when none is.
first_tool() {
	for t in "$@"; do
		if command -v "$t" >/dev/null 2>&1; then
			command -v "$t"
			return 0
		fi
	done
	return 1
}

# require_kernel TAG WHO README: the FreeBSD harnesses need
# FREEBSD_KERNEL; without it, say SKIP (WHO "need(s) a FreeBSD amd64
# kernel ...", see README) and exit 0; when it is not a file, exit 2.
require_kernel() {
	if [ -z "${FREEBSD_KERNEL:-}" ]; then
		echo "SKIP: FREEBSD_KERNEL not set: $2 a FreeBSD amd64 kernel" \
		    "with a PVH entry (see $3)"
		exit 0
	fi
	if [ ! -f "$FREEBSD_KERNEL" ]; then
		echo "$1: FREEBSD_KERNEL=$FREEBSD_KERNEL is not a file" >&2
		exit 2
	fi
}

# kmod_tools: the tools that build and check a FreeBSD kernel module on
# any host (scripts/kmod.sh, scripts/xbbd-kmod.sh), each kept when set:
# KMOD_LD, KMOD_OBJCOPY, KMOD_NM, KMOD_READELF (exported for
# check-kernel-objects.sh), KMOD_CC, KMOD_AWK and BMAKE (empty when there
# is no bmake).
kmod_tools() {
	: "${KMOD_LD:=$(first_tool ld.lld-14 ld.lld ld || echo ld)}"
	: "${KMOD_OBJCOPY:=$(first_tool llvm-objcopy-14 llvm-objcopy objcopy || echo objcopy)}"
	: "${KMOD_NM:=$(first_tool llvm-nm-14 llvm-nm nm || echo nm)}"
	: "${KMOD_READELF:=$(first_tool llvm-readelf-14 llvm-readelf readelf || echo readelf)}"
	: "${KMOD_CC:=$(first_tool clang-14 clang || echo clang)}"
	: "${KMOD_AWK:=$(first_tool gawk awk || echo awk)}"
	: "${BMAKE:=$(first_tool bmake || true)}"
	export KMOD_LD KMOD_OBJCOPY KMOD_NM KMOD_READELF
}

# init_tools: the tools that build a freestanding FreeBSD /sbin/init and
# its cd9660 root: CC, LD (kept when set) and XORRISO; what is missing is
# added to $missing as Debian package names.
init_tools() {
	: "${CC:=$(first_tool clang-14 clang || true)}"
	: "${LD:=$(first_tool ld.lld-14 ld.lld || true)}"
	XORRISO=$(first_tool xorriso || true)
	[ -n "$CC" ] || missing="$missing clang-14"
	[ -n "$LD" ] || missing="$missing lld-14"
	[ -n "$XORRISO" ] || missing="$missing xorriso"
}

# init_dirs WORK: build=WORK/build and root=WORK/root, emptied, with the
# directories of an init's cd9660 root (sbin, boot/modules, dev).
init_dirs() {
	build=$1/build
	root=$1/root
	rm -rf "$build" "$root"
	mkdir -p "$build" "$root/sbin" "$root/boot/modules" "$root/dev"
}

# freebsd_version: __FreeBSD_version of the tree $FREEBSD_SRC, or 1500000
# without one.
freebsd_version() {
	if [ -n "${FREEBSD_SRC:-}" ] && [ -f "$FREEBSD_SRC/sys/sys/param.h" ]; then
		awk '$1 == "#define" && $2 == "__FreeBSD_version" { print $3 }' \
		    "$FREEBSD_SRC/sys/sys/param.h"
	else
		echo 1500000
	fi
}

# build_init SRC FLAG...: compiles the freestanding init SRC (with FLAGs
# after the common ones) into $build and links it as $root/sbin/init.
build_init() {
	src=$1
	shift
	obj=$build/$(basename "$src" .c).o
	"$CC" --target=x86_64-unknown-freebsd15.0 -ffreestanding -nostdlib \
	    -fno-stack-protector -fno-pic -fno-builtin -Os -Wall -Wextra -Werror \
	    "$@" -c "$src" -o "$obj"
	"$LD" -m elf_x86_64_fbsd -static -e _start -o "$root/sbin/init" "$obj"
}
