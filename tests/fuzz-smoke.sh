#!/bin/sh
# A short coverage-guided fuzzing pass over every target in fuzz/: the ring
# consumer, the request parser, the XenStore vetting and the whole
# instance. Each starts from the seeds the unit tests write
# (tests/fuzz_seeds.rs with XBB_FUZZ_CORPUS) and from what earlier runs
# kept in fuzz/corpus/. Installs cargo-fuzz when missing. cargo-fuzz needs
# unstable rustc flags; RUSTC_BOOTSTRAP lets the stable toolchain accept
# them. Usage: fuzz-smoke.sh [seconds-per-target]
set -eu
secs=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install --locked cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
fi
echo "fuzz-smoke: seeds from tests/fuzz_seeds.rs"
(cd "$root" && XBB_FUZZ_CORPUS="$root/fuzz/corpus" cargo test -q --test fuzz_seeds >/dev/null)
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in ring request xenstore instance; do
    echo "fuzz-smoke: $t for ${secs}s"
    # The status of cargo fuzz itself, not of a pipe: a crash must fail CI.
    if ! cargo fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=0 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz-smoke: $t FAILED (the input is under fuzz/artifacts/$t/)"
        exit 1
    fi
    tail -n 3 "$log"
done
