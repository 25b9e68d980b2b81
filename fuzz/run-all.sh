#!/usr/bin/env bash
# Usage: fuzz/run-all.sh [SECONDS]
# Runs every fuzz target for SECONDS each (default 60), one after another (the
# machine is shared), then lists the crash files libFuzzer saved in fuzz/artifacts.
# Exits 1 if any target found a new crash, 2 if a target could not run at all.
#
# libFuzzer grows its corpus in a scratch dir ($FUZZ_SCRATCH, default
# /tmp/mioket-fuzz-corpus/TARGET); the checked-in seeds in corpus/TARGET are only
# read, so the repository keeps its handful of seeds.
set -u
cd "$(dirname "$0")"
seconds=${1:-60}
scratch=${FUZZ_SCRATCH:-/tmp/mioket-fuzz-corpus}
marker=$(mktemp)
trap 'rm -f "$marker"' EXIT
status=0
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target" "artifacts/$target"
    log="$scratch/$target.log"
    echo "== $target: $seconds s (log: $log)"
    # A crash ends libFuzzer early with a non-zero status; it is counted from the
    # artifacts below, and the other targets still run.
    cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    ran=$?
    grep -E '^#[0-9]+.*DONE|^stat::(number_of_executed_units|average_exec_per_sec)|panicked at' -A1 "$log" | grep -v -e '^--' -e '^###' | head -8
    new=$(find "artifacts/$target" -type f -newer "$marker")
    if [ -n "$new" ]; then
        echo "!! $target found:"
        echo "$new" | sed 's/^/   /'
        status=1
    elif [ "$ran" -ne 0 ]; then
        echo "!! $target did not run (exit $ran):"
        tail -n 15 "$log"
        [ "$status" -eq 0 ] && status=2
    fi
done
if [ "$status" -eq 1 ]; then
    echo "Minimise with 'cargo +nightly fuzz tmin TARGET FILE' and keep the input in fuzz/regressions/TARGET/."
fi
exit "$status"
