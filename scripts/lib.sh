# Shell helpers shared by the build and test scripts (POSIX sh; sourced,
# never run): scripts/kmod.sh, scripts/check-kernel-objects.sh,
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
