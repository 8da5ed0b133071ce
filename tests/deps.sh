#!/bin/sh
# Installs what the test suite needs beyond cargo: Xen's public headers (the
# ABI test compiles C against them), a C compiler, mandoc (xbb(4) lint),
# kyua, atf-sh and jq (the ATF suite), and for the NBD store libnbd (the
# library, loaded at run time, and its header for the prototype check),
# nbdkit and qemu-nbd (the servers its tests run). Installs only as root
# with apt-get; otherwise says what is missing and those tests skip.
set -eu
need=""
[ -f /usr/include/xen/io/blkif.h ] || need="$need libxen-dev"
command -v cc >/dev/null 2>&1 || need="$need gcc"
# xbb(4) is linted with mandoc; the ATF suite runs under kyua (atf-sh, jq).
command -v mandoc >/dev/null 2>&1 || need="$need mandoc"
command -v kyua >/dev/null 2>&1 || need="$need kyua"
command -v atf-sh >/dev/null 2>&1 || [ -x /usr/libexec/atf-sh ] || need="$need atf-sh"
command -v jq >/dev/null 2>&1 || need="$need jq"
# The kernel-target Rust build: Debian's Rust with its library sources
# (-Zbuild-std) and LLVM's linker and object tools for the checks.
[ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || need="$need rustc-web cargo-web"
[ -d /usr/lib/rustlib/src/rust/library ] || need="$need rust-web-src"
command -v ld.lld-14 >/dev/null 2>&1 || need="$need lld-14"
command -v llvm-objdump-14 >/dev/null 2>&1 || need="$need llvm-14"
# freebsd/src/ffi.rs is checked against bindgen's view of sys-glue/xbb_shim.h.
# Debian's bindgen loads libclang at run time and only recommends it and
# clang's own headers (stddef.h), so a --no-install-recommends install
# names them.
command -v bindgen >/dev/null 2>&1 || need="$need bindgen"
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang-*.so* >/dev/null 2>&1 ||
    need="$need libclang1-14"
ls /usr/lib/llvm-*/lib/clang/*/include/stddef.h >/dev/null 2>&1 ||
    need="$need libclang-common-14-dev"
# The NBD store: libnbd.so.0 (dlopen'ed), <libnbd.h>, nbdkit's memory
# plugin and qemu-nbd over a qcow2 file. qemu-utils only when there is no
# qemu-nbd at all: a host that has one (the xenlab harness pins bookworm's
# 7.2 beside qemu-system-x86) keeps it.
[ -f /usr/include/libnbd.h ] || need="$need libnbd-dev"
ls /usr/lib/*/libnbd.so.0 >/dev/null 2>&1 || need="$need libnbd0"
command -v nbdkit >/dev/null 2>&1 || need="$need nbdkit"
command -v qemu-nbd >/dev/null 2>&1 || need="$need qemu-utils"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
else
    echo "deps: missing$need (the ABI, man page and ATF checks need them)"
fi
