#!/bin/bash
# matrix.sh: the stress scenario (9) of the xenlab host, booted again and
# again over a matrix of back-ends and emulated CPU models, with the crashes
# of each boot counted. This is how the CPU model of run.sh was chosen.
#
#   tests/xenlab/matrix.sh [--boots N] [--cpus "max max,-xsave"]
#                          [--backends "xbb blkback"] [--secs S] [--out DIR]
#                          [--xen-args "WORDS"]
#
# Every boot is a fresh run.sh --scenarios 9 (XENLAB_STRESS_SECS=S); the
# cells are interleaved (boot 1 of every cell, then boot 2, ...), so a
# change of the machine's load hits every cell alike. Each boot's results
# stay in DIR/<cell>-<boot>/; DIR/table.txt is the table. A boot counts as
# crashed when crash-scan.sh found anything (a process, kernel or domain
# crash, a lost register, a wrong dom0 answer); one that shows no crash but
# never finished (a boot gets S + 480 s, a healthy one needs about S + 100 s
# on a quiet machine) counts as unfinished: look at its serial log and
# ps.txt before believing either.
# --xen-args adds words to Xen's command line in every cell (and to the
# cells' names). Needs what run.sh needs; run nothing else on the machine
# meanwhile.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BOOTS=3
CPUS="max max,-xsave"
BACKENDS="xbb blkback"
SECS=240
OUT=${XENLAB_DIR:-/tmp/xbb-xenlab}/matrix
XEN_ARGS=""
while [ $# -gt 0 ]; do
	case "$1" in
	--boots) BOOTS=$2; shift ;;
	--cpus) CPUS=$2; shift ;;
	--backends) BACKENDS=$2; shift ;;
	--secs) SECS=$2; shift ;;
	--out) OUT=$2; shift ;;
	--xen-args) XEN_ARGS=$2; shift ;;
	-h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "matrix: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
DIR=${XENLAB_DIR:-/tmp/xbb-xenlab}
mkdir -p "$OUT"
cell_name() { echo "$1@$2${XEN_ARGS:++$XEN_ARGS}" | tr ', =' '_._'; }

for b in $(seq 1 "$BOOTS"); do
	for cpu in $CPUS; do
		for be in $BACKENDS; do
			cell=$(cell_name "$be" "$cpu")
			d=$OUT/$cell-$b
			[ -f "$d/verdict.txt" ] && continue # resume an interrupted matrix
			echo "matrix: boot $b of $cell"
			standin=""
			[ "$be" = blkback ] && standin=blkback
			XENLAB_STANDIN=$standin XENLAB_CPU=$cpu XENLAB_STRESS_SECS=$SECS XENLAB_XEN_ARGS=$XEN_ARGS \
				bash "$HERE/run.sh" --scenarios 9 --timeout $((SECS + 480)) > "$OUT/$cell-$b.log" 2>&1
			rc=$?
			rm -rf "$d"
			cp -a "$DIR/results" "$d"
			mv "$OUT/$cell-$b.log" "$d/run.log"
			n=$(grep -c . "$d/crashes.txt" 2> /dev/null)
			end=1
			grep -q 'XENLAB-END' "$d/serial.log" 2> /dev/null || end=0
			echo "rc=$rc signs=${n:-0} finished=$end" > "$d/verdict.txt"
			echo "matrix: $cell boot $b: run.sh status $rc, ${n:-0} signs of a crash, dom0 finished: $end"
		done
	done
done

median() { printf '%s\n' "$@" | grep . | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "-" }'; }

# The table: per cell, boots, boots with a crash, lost registers, wrong
# dom0 answers, the medians of dom0check rounds, guest boots and hot-plug
# rounds done in the fixed time, and what was seen.
{
	printf '%-24s %5s %8s %10s %7s %6s %9s %8s %8s  %s\n' cell boots crashed unfinished vlost d0bad d0rounds g-boots g-rounds "signs (boots showing each kind)"
	for cpu in $CPUS; do
		for be in $BACKENDS; do
			cell=$(cell_name "$be" "$cpu")
			boots=0 crashed=0 unfinished=0 vlost=0 d0bad=0 kinds="" rounds="" gboots="" grounds=""
			for d in "$OUT/$cell"-*/; do
				[ -f "$d/verdict.txt" ] || continue
				boots=$((boots + 1))
				n=$(sed -n 's/.*signs=\([0-9]*\).*/\1/p' "$d/verdict.txt")
				[ "${n:-0}" -gt 0 ] && crashed=$((crashed + 1))
				grep -q 'finished=0' "$d/verdict.txt" && [ "${n:-0}" = 0 ] && unfinished=$((unfinished + 1))
				# Registers lost: the checkers' own totals (a FAIL line is
				# printed for the first few only); a checker that never
				# finished counts its FAIL lines.
				v=$(cat "$d"/vcheck-dom0-*.txt "$d"/guest-s9?.log 2> /dev/null | tr -d '\r' | awk '
					/VCHECK done/ { for (i = 1; i <= NF; i++) if ($i ~ /_lost=/) { split($i, a, "="); done += a[2] } ; nd++ }
					/VCHECK FAIL/ { fails++ }
					END { print (nd ? done : fails + 0) }')
				vlost=$((vlost + ${v:-0}))
				v=$(grep -c 'DOM0CHECK FAIL' "$d/dom0check.txt" 2> /dev/null)
				d0bad=$((d0bad + ${v:-0}))
				# How much work fitted into the fixed time: the CPU model's cost.
				rounds="$rounds $(sed -n 's/.*DOM0CHECK done rounds=\([0-9]*\).*/\1/p' "$d/dom0check.txt" 2> /dev/null)"
				gboots="$gboots $(sed -n 's/.*s9r-boots result=PASS \([0-9]*\).*/\1/p' "$d/summary.txt" 2> /dev/null)"
				grounds="$grounds $(sed -n 's/.*s9h-rounds result=PASS \([0-9]*\).*/\1/p' "$d/summary.txt" 2> /dev/null)"
				k=$(sed 's/^[^:]*: //' "$d/crashes.txt" 2> /dev/null | grep -a -o -E 'segfault at|general protection|Segmentation fault|malloc\(\)|Inconsistency detected|Assertion|invalid field index|command not found|Triple fault|Fatal trap|Kernel panic|VCHECK FAIL|DOM0CHECK FAIL|core dump|Aborted' | sort -u | tr '\n' ',')
				kinds="$kinds$k"
			done
			kinds=$(echo "$kinds" | tr ',' '\n' | grep . | sort | uniq -c | awk '{ printf "%s%s x%d", sep, substr($0, index($0, $2)), $1; sep = "; " }')
			printf '%-24s %5d %8d %10d %7d %6d %9s %8s %8s  %s\n' "$cell" "$boots" "$crashed" "$unfinished" "$vlost" "$d0bad" \
				"$(median $rounds)" "$(median $gboots)" "$(median $grounds)" "$kinds"
		done
	done
} | tee "$OUT/table.txt"
