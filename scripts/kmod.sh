#!/bin/sh
# Builds xbb.ko, the FreeBSD kernel module, or just its Rust half.
#
#   scripts/kmod.sh rust [OBJ]   build the Rust kernel static library for the
#                                soft-float kernel target, turn it into one
#                                relocatable object OBJ (default:
#                                $KMOD_BUILD/xbb_rust.o) and check it
#                                (scripts/check-kernel-objects.sh).  Needs
#                                no FreeBSD tree.
#   scripts/kmod.sh ko           rust, then build xbb.ko with bmake + clang against the
#                                FreeBSD tree $FREEBSD_SRC (sys/, share/mk/),
#                                with -Werror, and check it; without a tree,
#                                say so and exit 0.
#   scripts/kmod.sh all          the same as ko (the default).
#   scripts/kmod.sh clean        remove $KMOD_BUILD.
#
# Environment (all optional):
#   FREEBSD_SRC   a FreeBSD 15 source tree (sys/ and share/mk/ are enough).
#   KMOD_BUILD    build directory, default <repo>/target/kmod (never committed).
#   KMOD_PROFILE  cargo profile for the Rust library: release (default) or dev.
#   CARGO, RUSTC  default /usr/bin/cargo and /usr/bin/rustc when present:
#                 -Zbuild-std needs a toolchain that ships its library
#                 sources (Debian: rustc-web, cargo-web, rust-web-src).
#   KMOD_CC, KMOD_LD, KMOD_OBJCOPY, KMOD_NM, KMOD_OBJDUMP, KMOD_READELF,
#   KMOD_AWK, BMAKE   tools; the defaults suit Debian (clang-14, lld-14,
#                 llvm-14, gawk, bmake) and FreeBSD alike.
#
# On FreeBSD, plain `make` in the repository root builds the module; the
# Makefile calls `scripts/kmod.sh rust-obj` for the Rust object.
#
# POSIX sh: the same script runs from FreeBSD's make.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
: "${KMOD_BUILD:=$repo/target/kmod}"
: "${KMOD_PROFILE:=release}"
. "$here/lib.sh"

find_tools() {
	if [ -z "${CARGO:-}" ]; then
		if [ -x /usr/bin/cargo ]; then CARGO=/usr/bin/cargo; else CARGO=cargo; fi
	fi
	if [ -z "${RUSTC:-}" ]; then
		if [ -x /usr/bin/rustc ]; then RUSTC=/usr/bin/rustc; else RUSTC=rustc; fi
	fi
	kmod_tools
	export CARGO RUSTC
}

# The Rust library: cargo with -Zbuild-std for the JSON target.
build_rust() {
	obj=${1:-$KMOD_BUILD/xbb_rust.o}
	find_tools
	if ! command -v "$RUSTC" >/dev/null 2>&1 || ! command -v "$CARGO" >/dev/null 2>&1; then
		echo "kmod: $RUSTC or $CARGO not found (Debian: apt-get install rustc-web cargo-web rust-web-src)" >&2
		exit 1
	fi
	sysroot=$("$RUSTC" --print sysroot)
	libsrc=$sysroot/lib/rustlib/src/rust/library
	if [ ! -d "$libsrc/core" ]; then
		echo "kmod: $RUSTC has no library sources at $libsrc; -Zbuild-std needs them" \
		    "(Debian: rust-web-src; rustup: the rust-src component)" >&2
		exit 1
	fi
	mkdir -p "$KMOD_BUILD"
	target_dir=$KMOD_BUILD/cargo
	set -- --config "build.target-dir=\"$target_dir\""
	# Offline: build-std's own dependencies come from the library's
	# vendored sources when the toolchain ships them.
	if [ -d "$libsrc/vendor" ]; then
		set -- "$@" --config 'source.crates-io.replace-with="xbb-vendored-std"' \
		    --config "source.xbb-vendored-std.directory=\"$libsrc/vendor\"" \
		    --offline
	fi
	case $KMOD_PROFILE in
	release) pflag=--release; pdir=release ;;
	dev) pflag=; pdir=debug ;;
	*) echo "kmod: KMOD_PROFILE must be release or dev" >&2; exit 2 ;;
	esac
	echo "kmod: cargo build of the Rust kernel library ($KMOD_PROFILE)"
	# shellcheck disable=SC2086
	(cd "$repo/kmod" &&
	    RUSTC_BOOTSTRAP=1 RUSTC="$RUSTC" CARGO_TARGET_DIR="$target_dir" \
	    "$CARGO" "$@" build $pflag \
	    --target "$repo/kmod/x86_64-xbb-freebsd-kernel.json" \
	    -Zjson-target-spec -Zbuild-std=core,alloc)
	lib=$target_dir/x86_64-xbb-freebsd-kernel/$pdir/libxbb_kmod.a
	[ -f "$lib" ] || { echo "kmod: $lib was not built" >&2; exit 1; }

	# One relocatable object holding the xbb_rs_* entry points and only
	# the archive members they need (compiler_builtins is split per
	# function), without the LTO bitcode sections.
	uargs=$("$KMOD_NM" -g --defined-only "$lib" 2>/dev/null |
	    awk '$3 ~ /^xbb_rs_/ { print "-u " $3 }' | sort -u | tr '\n' ' ')
	if [ -z "$uargs" ]; then
		echo "kmod: $lib defines no xbb_rs_* entry point" >&2
		exit 1
	fi
	mkdir -p "$(dirname "$obj")"
	# shellcheck disable=SC2086
	"$KMOD_LD" -m elf_x86_64_fbsd -r -o "$obj.tmp" $uargs "$lib"
	# LLVM turns memcmp() == 0 into bcmp() for FreeBSD targets, but the
	# FreeBSD 15 kernel has no bcmp symbol (it is a macro for memcmp):
	# kldload failed with "symbol bcmp undefined" until this rename.
	"$KMOD_OBJCOPY" --remove-section=.llvmbc --remove-section=.llvmcmd \
	    --remove-section='.note.GNU-stack' --redefine-sym bcmp=memcmp \
	    "$obj.tmp" "$obj"
	rm -f "$obj.tmp"
	echo "kmod: $obj"
}

check() {
	sh "$here/check-kernel-objects.sh" "$@"
}

build_ko() {
	if [ -z "${FREEBSD_SRC:-}" ]; then
		echo "kmod: FREEBSD_SRC is not set: skipping the xbb.ko build" \
		    "(point it at a FreeBSD 15 tree with sys/ and share/mk/;" \
		    "scripts/export-freebsd-tree.sh makes one from a git directory)"
		return 0
	fi
	if [ ! -f "$FREEBSD_SRC/sys/conf/kmod.mk" ] || [ ! -d "$FREEBSD_SRC/share/mk" ]; then
		echo "kmod: $FREEBSD_SRC has no sys/conf/kmod.mk or share/mk: skipping the xbb.ko build"
		return 0
	fi
	find_tools
	if [ -z "$BMAKE" ]; then
		echo "kmod: bmake not found (Debian: apt-get install bmake)" >&2
		exit 1
	fi
	case $(uname -s) in
	FreeBSD) xargs_shim=xargs ;;
	*) xargs_shim=$here/xargs-J ;;
	esac
	# kern.mk rewrites a versioned lld name; give it an absolute path to
	# a link named ld.lld.
	mkdir -p "$KMOD_BUILD/bin" "$KMOD_BUILD/obj"
	# The C objects depend on the kernel's options (KERNBUILDDIR's
	# opt_global.h: KDTRACE_HOOKS, INVARIANTS, ...), which bmake does not
	# track: built for another kernel build directory, they are rebuilt.
	stamp=$KMOD_BUILD/obj/.kernbuilddir
	if [ "$(cat "$stamp" 2>/dev/null)" != "${KERNBUILDDIR:-}" ]; then
		rm -f "$KMOD_BUILD/obj"/*.o "$KMOD_BUILD/obj"/*.ko \
		    "$KMOD_BUILD/obj"/*.full "$KMOD_BUILD/obj"/*.debug "$stamp"
	fi
	cp "$KMOD_BUILD/xbb_rust.o" "$KMOD_BUILD/obj/xbb_rust.o"
	ln -sf "$(command -v "$KMOD_LD")" "$KMOD_BUILD/bin/ld.lld"
	echo "kmod: bmake against $FREEBSD_SRC"
	MAKEOBJDIR=$KMOD_BUILD/obj "$BMAKE" -C "$repo" -m "$FREEBSD_SRC/share/mk" \
	    SYSDIR="$FREEBSD_SRC/sys" \
	    MACHINE=amd64 MACHINE_ARCH=amd64 MACHINE_CPUARCH=amd64 \
	    CC="$KMOD_CC --target=x86_64-unknown-freebsd15.0" \
	    LD="$KMOD_BUILD/bin/ld.lld" OBJCOPY="$KMOD_OBJCOPY" NM="$KMOD_NM" \
	    AWK="$KMOD_AWK" XARGS="$xargs_shim" \
	    WERROR=-Werror KMOD_SKIP_RUST=yes all
	ko=$KMOD_BUILD/obj/xbb.ko
	[ -f "$ko" ] || { echo "kmod: $ko was not built" >&2; exit 1; }
	echo "${KERNBUILDDIR:-}" > "$stamp"
	check --module "$ko"
	# With the kernel it was built for at hand, every undefined symbol
	# must also be one that kernel defines (the allowlist above is the
	# KPI xbb may use; this is what kldload will find).
	if [ -n "${KERNBUILDDIR:-}" ] && [ -f "$KERNBUILDDIR/kernel" ]; then
		check --kernel "$KERNBUILDDIR/kernel" "$ko"
	fi
}

cmd=${1:-all}
[ $# -gt 0 ] && shift
case $cmd in
rust)
	build_rust "$@"
	check "${1:-$KMOD_BUILD/xbb_rust.o}"
	;;
rust-obj)
	# Called from the Makefile: build only, the Makefile's caller checks.
	build_rust "$@"
	;;
ko|all)
	build_rust
	check "$KMOD_BUILD/xbb_rust.o"
	build_ko
	;;
clean)
	rm -rf "$KMOD_BUILD"
	;;
*)
	echo "usage: $0 [rust [OBJ] | ko | all | clean]" >&2
	exit 2
	;;
esac
