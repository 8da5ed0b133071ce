#!/bin/sh
# SPDX-License-Identifier: BSD-2-Clause
#
# Builds FreeBSD's own Xen block back-end, the user's
# $FREEBSD_SRC/sys/dev/xen/blkback/blkback.c, as a loadable module xbbd.ko
# (kld file "xbbd.ko", newbus driver "xbbd" on xenbusb_back, module
# "xenbusb_back/xbbd"), for a comparison with xbb.ko in the same driver
# domain (tests/freebsd/xen).  Nothing of FreeBSD is in this repository:
# the source is compiled from the user's tree at build time, the module
# lands under target/ only, and this script is all that is ours.
#
# The build is kmod.sh's: bmake with the tree's own share/mk and
# sys/conf/kmod.mk, clang for x86_64-unknown-freebsd15.0, ld.lld, the
# kernel build directory's opt_*.h (KERNBUILDDIR), -Werror and
# -fno-stack-protector (the module linker refuses the GOT relocation
# clang uses for __stack_chk_guard).  blkback.c is compiled unchanged:
# its DRIVER_MODULE(xbbd, xenbusb_back, ...) is the module's metadata.
#
#   scripts/xbbd-kmod.sh [build]  build $XBBD_BUILD/xbbd.ko and check it
#   scripts/xbbd-kmod.sh check    check an existing $XBBD_BUILD/xbbd.ko
#   scripts/xbbd-kmod.sh clean    remove $XBBD_BUILD
#
# Checks (scripts/check-kernel-objects.sh, then the metadata): no SSE/AVX/
# MMX instruction, only relocation types the module linker takes, every
# undefined symbol exported by the kernel ($XBBD_KERNEL, default
# $KERNBUILDDIR/kernel: its dynamic symbol table, which the module linker
# searches), and a modmetadata_set naming the module xenbusb_back/xbbd.
#
# Environment:
#   FREEBSD_SRC    a FreeBSD 15 tree (sys/ and share/mk/) holding
#                  sys/dev/xen/blkback/blkback.c.
#   KERNBUILDDIR   the build directory of the kernel the module is for (its
#                  opt_*.h; VIMAGE, MAC, INVARIANTS change structure layouts).
#                  That kernel must not have blkback.c built in: a second
#                  module xenbusb_back/xbbd does not load.
#   XBBD_KERNEL    the kernel to check the undefined symbols against;
#                  default $KERNBUILDDIR/kernel (skipped when absent).
#   XBBD_BUILD     build directory, default <repo>/target/xbbd.
#   XBBD_SKIP_STATUS  exit status when FREEBSD_SRC, KERNBUILDDIR or
#                  blkback.c is missing (nothing built): default 0; the
#                  harness sets 3 to tell a skip from a build.
#   KMOD_CC, KMOD_LD, KMOD_OBJCOPY, KMOD_NM, KMOD_READELF, KMOD_AWK,
#   BMAKE          tools, as for scripts/kmod.sh (Debian: clang-14, lld-14,
#                  llvm-14, gawk, bmake).
# Exit status: 0 built and checked (or skipped, see XBBD_SKIP_STATUS);
# 1 the build or a check failed; 2 usage.
#
# POSIX sh.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
: "${XBBD_BUILD:=$repo/target/xbbd}"
: "${XBBD_SKIP_STATUS:=0}"
. "$here/lib.sh"

skip() {
	echo "xbbd-kmod: SKIP: $*: FreeBSD's blkback (xbbd.ko) is not built"
	exit "$XBBD_SKIP_STATUS"
}

# The inputs, or a skip.
need_tree() {
	[ -n "${FREEBSD_SRC:-}" ] ||
	    skip "FREEBSD_SRC is not set (a FreeBSD 15 tree with sys/ and share/mk/)"
	[ -n "${KERNBUILDDIR:-}" ] ||
	    skip "KERNBUILDDIR is not set (the build directory of the kernel to load it into)"
	if [ ! -f "$FREEBSD_SRC/sys/conf/kmod.mk" ] || [ ! -d "$FREEBSD_SRC/share/mk" ]; then
		skip "$FREEBSD_SRC has no sys/conf/kmod.mk or share/mk"
	fi
	[ -f "$FREEBSD_SRC/sys/dev/xen/blkback/blkback.c" ] ||
	    skip "$FREEBSD_SRC has no sys/dev/xen/blkback/blkback.c"
	[ -f "$KERNBUILDDIR/opt_global.h" ] ||
	    skip "KERNBUILDDIR=$KERNBUILDDIR has no opt_global.h"
}

# The module's Makefile, written into the build directory: a plain
# FreeBSD kmod Makefile (KMOD, SRCS with the generated interface headers
# blkback.c includes, .PATH to the user's tree).
write_makefile() {
	cat > "$XBBD_BUILD/Makefile" <<EOF
# Written by scripts/xbbd-kmod.sh; FreeBSD's blkback as the module xbbd.ko.
KMOD=	xbbd
SRCS=	blkback.c
SRCS+=	bus_if.h device_if.h vnode_if.h xenbus_if.h opt_global.h
.PATH:	$FREEBSD_SRC/sys/dev/xen/blkback
.include <bsd.kmod.mk>
# After the include, so that it follows kern.mk's -fstack-protector.
CFLAGS+=	-fno-stack-protector
EOF
}

build() {
	need_tree
	kmod_tools
	if [ -z "$BMAKE" ]; then
		echo "xbbd-kmod: bmake not found (Debian: apt-get install bmake)" >&2
		exit 1
	fi
	case $(uname -s) in
	FreeBSD) xargs_shim=xargs ;;
	*) xargs_shim=$here/xargs-J ;;
	esac
	obj=$XBBD_BUILD/obj
	mkdir -p "$XBBD_BUILD/bin" "$obj"
	# Objects and option-header links of another tree or kernel build
	# directory are not reused: bmake does not see that change.
	stamp=$obj/.inputs
	inputs="$FREEBSD_SRC $KERNBUILDDIR"
	if [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ]; then
		rm -f "$obj"/*.o "$obj"/*.ko "$obj"/*.full "$obj"/*.debug \
		    "$obj"/opt_*.h "$obj"/.depend* "$XBBD_BUILD/xbbd.ko" "$stamp"
	fi
	write_makefile
	# kern.mk rewrites a versioned lld name; give it an absolute path to
	# a link named ld.lld.
	ln -sf "$(command -v "$KMOD_LD")" "$XBBD_BUILD/bin/ld.lld"
	echo "xbbd-kmod: bmake of $FREEBSD_SRC/sys/dev/xen/blkback/blkback.c" \
	    "for KERNBUILDDIR=$KERNBUILDDIR"
	MAKEOBJDIR=$obj "$BMAKE" -C "$XBBD_BUILD" -m "$FREEBSD_SRC/share/mk" \
	    SYSDIR="$FREEBSD_SRC/sys" KERNBUILDDIR="$KERNBUILDDIR" \
	    MACHINE=amd64 MACHINE_ARCH=amd64 MACHINE_CPUARCH=amd64 \
	    CC="$KMOD_CC --target=x86_64-unknown-freebsd15.0" \
	    LD="$XBBD_BUILD/bin/ld.lld" OBJCOPY="$KMOD_OBJCOPY" NM="$KMOD_NM" \
	    AWK="$KMOD_AWK" XARGS="$xargs_shim" \
	    WERROR=-Werror all
	[ -f "$obj/xbbd.ko" ] || { echo "xbbd-kmod: $obj/xbbd.ko was not built" >&2; exit 1; }
	echo "$inputs" > "$stamp"
	cp "$obj/xbbd.ko" "$XBBD_BUILD/xbbd.ko"
	echo "xbbd-kmod: $XBBD_BUILD/xbbd.ko"
	check
}

# The module's metadata: DRIVER_MODULE(xbbd, xenbusb_back, ...) puts two
# struct mod_metadata into the linker set modmetadata_set: MDT_MODULE
# "xbbd_xenbusb_back" (whose moduledata_t names the module
# "xenbusb_back/xbbd") and MDT_DEPEND on "kernel", __FreeBSD_version of the
# tree up to the end of its major branch (sys/module.h).
check_metadata() {
	ko=$1
	bad=
	"$KMOD_READELF" -S -W "$ko" > "$XBBD_BUILD/sections.txt"
	"$KMOD_NM" "$ko" > "$XBBD_BUILD/nm.txt"
	grep -q ' set_modmetadata_set ' "$XBBD_BUILD/sections.txt" ||
	    bad="$bad no-set_modmetadata_set"
	for sym in _mod_metadata_md_xbbd_xenbusb_back \
	    _mod_metadata_md_xbbd_xenbusb_back_on_kernel \
	    __set_modmetadata_set_sym__mod_metadata_md_xbbd_xenbusb_back \
	    __set_modmetadata_set_sym__mod_metadata_md_xbbd_xenbusb_back_on_kernel \
	    xbbd_xenbusb_back_mod xbbd_xenbusb_back_driver_mod; do
		grep -q " $sym\$" "$XBBD_BUILD/nm.txt" || bad="$bad no-$sym"
	done
	for str in xenbusb_back/xbbd xbbd_xenbusb_back xbbd; do
		"$KMOD_READELF" -p .rodata "$ko" 2>/dev/null |
		    grep -q "] *$str\$" || bad="$bad no-string-$str"
	done
	# struct mod_depend (three ints) of the dependency on the kernel.
	dep=$(awk '$NF == "_xbbd_xenbusb_back_depend_on_kernel" { print $1 }' \
	    "$XBBD_BUILD/nm.txt")
	data=$(awk '{ for (i = 1; i < NF; i++) if ($i == ".data") { print $(i + 3); exit } }' \
	    "$XBBD_BUILD/sections.txt")
	vers=
	if [ -n "$dep" ] && [ -n "$data" ]; then
		vers=$(od -A n -t d4 -j $((0x$data + 0x$dep)) -N 12 "$ko" |
		    awk '{ print $1 "-" $3 " (preferred " $2 ")" }')
	fi
	[ -n "$vers" ] || bad="$bad no-kernel-dependency"
	if [ -n "$bad" ]; then
		echo "check: xbbd.ko: FAIL: module metadata:$bad"
		return 1
	fi
	echo "check: xbbd.ko: ok: modmetadata_set: MDT_MODULE xbbd_xenbusb_back" \
	    "(module xenbusb_back/xbbd: DRIVER_MODULE xbbd on xenbusb_back)," \
	    "MDT_DEPEND kernel $vers"
}

check() {
	kmod_tools
	ko=$XBBD_BUILD/xbbd.ko
	[ -f "$ko" ] || { echo "xbbd-kmod: no $ko to check" >&2; exit 1; }
	kernel=${XBBD_KERNEL:-${KERNBUILDDIR:+$KERNBUILDDIR/kernel}}
	rc=0
	if [ -n "$kernel" ] && [ -f "$kernel" ]; then
		sh "$here/check-kernel-objects.sh" --kernel "$kernel" "$ko" || rc=1
	else
		echo "xbbd-kmod: no kernel to check undefined symbols against" \
		    "(XBBD_KERNEL or KERNBUILDDIR/kernel): only code and relocations"
		# Undefined symbols are then reported against xbb's allowlist,
		# which is not blkback's: only the first two checks count.
		sh "$here/check-kernel-objects.sh" --module "$ko" || :
	fi
	check_metadata "$ko" || rc=1
	return $rc
}

cmd=${1:-build}
case $cmd in
build) build ;;
check) check ;;
clean) rm -rf "$XBBD_BUILD" ;;
*)
	echo "usage: $0 [build | check | clean]" >&2
	exit 2
	;;
esac
