#!/bin/sh
# Checks that relocatable objects are fit for FreeBSD's amd64 kernel module
# linker and kernel code rules, and reports their size:
#
#  - no SSE/AVX/MMX instruction (no xmm, ymm, zmm or %mmN operand): the
#    kernel does not save the FPU state for kernel code;
#  - only R_X86_64_32S, _64, _PC32 and _PLT32 relocations: the module
#    linker refuses GOT and TLS relocations ("unexpected relocation type");
#  - undefined symbols only from an allowlist of kernel KPI names:
#    scripts/kernel-kpi.allow for a whole module (--module), only the
#    compiler's memory routines for the Rust object; or, with --kernel
#    KERNEL, only symbols that KERNEL exports to modules: its dynamic
#    symbol table, the one table the module linker searches
#    (sys/kern/link_elf.c, link_elf_lookup_symbol), or the bounds of a
#    linker set the object has a section for (__start_set_X,
#    __stop_set_X), which the module linker resolves within the module
#    (link_elf_obj.c, link_elf_fix_link_set).
#
# usage: scripts/check-kernel-objects.sh [--module | --kernel KERNEL] OBJECT...
# Exit status 1 when a check fails.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
module=no
kernel=
while [ $# -gt 0 ]; do
	case $1 in
	--module) module=yes; shift ;;
	--kernel)
		[ $# -ge 2 ] || { echo "$0: --kernel needs a file" >&2; exit 2; }
		kernel=$2
		shift 2
		;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--module | --kernel KERNEL] OBJECT..." >&2; exit 2; }
if [ -n "$kernel" ] && [ ! -f "$kernel" ]; then
	echo "check: --kernel $kernel: no such file" >&2
	exit 2
fi
. "$here/lib.sh"
: "${KMOD_OBJDUMP:=$(first_tool llvm-objdump-14 llvm-objdump objdump || echo objdump)}"
: "${KMOD_READELF:=$(first_tool llvm-readelf-14 llvm-readelf readelf || echo readelf)}"
: "${KMOD_NM:=$(first_tool llvm-nm-14 llvm-nm nm || echo nm)}"
: "${KMOD_SIZE:=$(first_tool llvm-size-14 llvm-size size || echo size)}"

# What Rust code may need from the kernel: the memory routines that the
# compiler emits calls to, and strlen (core's CStr::from_ptr); libkern
# provides them all.
# No bcmp: the FreeBSD 15 kernel defines none (kmod.sh renames it to memcmp;
# a kldload found it missing).
rust_allow="memcpy memmove memset memcmp strlen"

fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for obj in "$@"; do
	if [ ! -f "$obj" ]; then
		echo "check: $obj: no such file" >&2
		fail=1
		continue
	fi
	name=$(basename "$obj")

	# 1. Floating point and vector registers.
	"$KMOD_OBJDUMP" -d --no-show-raw-insn "$obj" > "$tmp/dis"
	nfp=$(grep -Eic '%?(xmm|ymm|zmm)[0-9]|%mm[0-7]' "$tmp/dis" || true)
	if [ "$nfp" -ne 0 ]; then
		echo "check: $name: FAIL: $nfp instructions use SSE/AVX/MMX registers:"
		grep -Ei '%?(xmm|ymm|zmm)[0-9]|%mm[0-7]' "$tmp/dis" | head -5
		fail=1
	else
		echo "check: $name: ok: no SSE/AVX/MMX instructions"
	fi

	# 2. Relocation types.
	"$KMOD_READELF" -r -W "$obj" |
	    awk '$3 ~ /^R_X86_64_/ { print $3 }' | sort | uniq -c > "$tmp/rel"
	bad=$(awk '$2 !~ /^R_X86_64_(32S|64|PC32|PLT32)$/ { print $2 "(" $1 ")" }' \
	    "$tmp/rel" | tr '\n' ' ')
	kinds=$(awk '{ print $2 "=" $1 }' "$tmp/rel" | sed 's/R_X86_64_//' | tr '\n' ' ')
	if [ -n "$bad" ]; then
		echo "check: $name: FAIL: relocation types outside {32S,64,PC32,PLT32}: $bad"
		fail=1
	else
		echo "check: $name: ok: relocations ${kinds:-none}"
	fi

	# 3. Undefined symbols.
	"$KMOD_NM" -u "$obj" | awk '{ print $NF }' | sort -u > "$tmp/undef"
	if [ -n "$kernel" ]; then
		if [ ! -s "$tmp/kernel-syms" ]; then
			"$KMOD_NM" -D --defined-only "$kernel" |
			    awk 'NF >= 3 { print $NF }' | sort -u > "$tmp/kernel-syms"
		fi
		{
			cat "$tmp/kernel-syms"
			"$KMOD_READELF" -S -W "$obj" | awk '{
				for (i = 1; i < NF; i++)
					if ($i ~ /^set_/) {
						print "__start_" $i
						print "__stop_" $i
					}
			}'
		} | sort -u > "$tmp/allow"
		against="exported by $(basename "$kernel")"
	elif [ "$module" = yes ]; then
		grep -v '^#' "$here/kernel-kpi.allow" | awk 'NF { print $1 }' |
		    sort -u > "$tmp/allow"
		against="not in the allowlist"
	else
		printf '%s\n' $rust_allow | sort -u > "$tmp/allow"
		against="not in the allowlist"
	fi
	# Exact names, and "prefix*" patterns.
	extra=$(comm -23 "$tmp/undef" "$tmp/allow" | awk -v f="$tmp/allow" '
	    BEGIN {
		while ((getline l < f) > 0)
			if (l ~ /\*$/)
				pre[substr(l, 1, length(l) - 1)] = 1
	    }
	    {
		for (p in pre)
			if (index($0, p) == 1)
				next
		print
	    }' | tr '\n' ' ')
	nundef=$(wc -l < "$tmp/undef" | tr -d ' ')
	if [ -n "$extra" ]; then
		if [ -n "$kernel" ]; then
			echo "check: $name: FAIL: undefined symbols not exported by $kernel: $extra"
		else
			echo "check: $name: FAIL: undefined symbols $against: $extra"
		fi
		fail=1
	elif [ -n "$kernel" ]; then
		echo "check: $name: ok: $nundef undefined symbols, all $against or the module's linker sets"
	else
		echo "check: $name: ok: $nundef undefined symbols, all kernel KPI"
	fi

	# Size.
	bytes=$(wc -c < "$obj" | tr -d ' ')
	"$KMOD_SIZE" "$obj" | awk -v n="$name" -v b="$bytes" \
	    'NR == 2 { printf "check: %s: size: text %s data %s bss %s, file %s bytes\n", n, $1, $2, $3, b }'
done
exit $fail
