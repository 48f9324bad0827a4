#!/bin/bash
# Builds the libFuzzer targets with clang-14 + ASan/UBSan into build-fuzz/ (or
# $LMQ_FUZZ_BUILD) and fuzzes them:
#
#   scripts/fuzz.sh TARGET [SECONDS]   one target (default 600 s)
#   scripts/fuzz.sh all [SECONDS]      each target in turn (CI: all 20)
#
# Targets: proto (wire codec), scpi (SCPI templates and replies), block (stream
# block headers), config (YAML config loader), usbtmc (USBTMC bulk-in header).
# Each starts from its committed seed corpus, tests/fuzz/corpus/TARGET, and the
# inputs that once crashed it, tests/fuzz/regressions/TARGET; new inputs that
# reach new code go to build-fuzz/fuzz-work/TARGET (copy the interesting ones
# into the seed corpus by hand). A crash stops the run and leaves
# build-fuzz/fuzz-work/crash-*: fix the bug, then add that file to
# tests/fuzz/regressions/TARGET, where the test suite replays it for ever.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
targets=(proto scpi block config usbtmc)
target=${1:-}
seconds=${2:-600}
if [[ -z "$target" || ! "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh TARGET|all [SECONDS]  (targets: ${targets[*]})" >&2
  exit 2
fi
if [[ "$target" == all ]]; then
  run=("${targets[@]}")
elif [[ " ${targets[*]} " == *" $target "* ]]; then
  run=("$target")
else
  echo "fuzz.sh: unknown target '$target' (targets: ${targets[*]}, or all)" >&2
  exit 2
fi

build=${LMQ_FUZZ_BUILD:-$root/build-fuzz}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { CC=clang-14 cmake -S "$root" -B "$build" -DLMQ_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$log" 2>&1 &&
       cmake --build "$build" -j"${LMQ_JOBS:-2}" --target "${run[@]/#/fuzz_}" >>"$log" 2>&1; }; then
  cat "$log" >&2
  echo "fuzz.sh: the fuzz build failed" >&2
  exit 1
fi

work=$build/fuzz-work
mkdir -p "$work"
# The config target's inputs name files relative to the source tree
# (examples/instruments/*.yaml), as the corpus replay test does.
cd "$root"
for t in "${run[@]}"; do
  mkdir -p "$work/$t"
  echo "fuzz.sh: fuzzing $t for $seconds s"
  # -timeout: one input taking 10 s is a hang, reported like a crash.
  # Leak checks stay on; -rss_limit_mb bounds a runaway allocation.
  if ! "$build/tests/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 -artifact_prefix="$work/" "$work/$t" \
        "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t" >"$work/$t.log" 2>&1; then
    tail -n 60 "$work/$t.log" >&2
    echo "fuzz.sh: $t failed; the input is in $work (crash-*, timeout-*, leak-* or oom-*)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$work/$t.log" | sed "s/^/fuzz.sh: $t: /"
done
