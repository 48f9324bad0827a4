#!/bin/bash
# README command 2: build everything with AddressSanitizer + UBSan into
# build-asan/ and run the whole test suite; then fuzz each fuzz target for a
# bounded time (scripts/fuzz.sh) and run the daemon-level tests under
# ThreadSanitizer (scripts/tsan.sh). Fails when any of the three fails.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup-deps.sh

jobs=${LMQ_JOBS:-2}

# Warnings are errors under gcc and clang alike: build everything with clang
# first (no tests run from it), so CTest's summary stays the last word.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { CC=clang cmake -S . -B build-clang >"$log" 2>&1 && cmake --build build-clang -j"$jobs" >>"$log" 2>&1; }; then
  cat "$log" >&2
  echo "test.sh: the clang build failed" >&2
  exit 1
fi
echo "test.sh: clang build clean"

cmake -S . -B build-asan -DLMQ_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

cd build-asan
# Tests spawn their own daemons on private temp-dir endpoints, so they can
# run side by side. (A time-out then still names the slow test.)
set +e
ctest --output-on-failure -j"$jobs"
rc=$?
cd "$root"
# Each fuzz target for a bounded time from its committed corpus (clang-14,
# libFuzzer, ASan/UBSan; build-fuzz/); scripts/fuzz.sh TARGET SECONDS runs
# one longer.
scripts/fuzz.sh all "${LMQ_FUZZ_SECONDS:-20}"
fuzz_rc=$?
# The daemon-level tests again under ThreadSanitizer (build-tsan/).
scripts/tsan.sh -j"$jobs"
tsan_rc=$?
set -e
failed=()
((rc == 0)) || failed+=("ctest (exit $rc)")
((fuzz_rc == 0)) || failed+=("fuzzing (exit $fuzz_rc)")
((tsan_rc == 0)) || failed+=("ThreadSanitizer tests (exit $tsan_rc)")
if ((${#failed[@]} == 0)); then
  echo "test.sh: all tests passed (ASan/UBSan suite, fuzzing, ThreadSanitizer)"
  exit 0
fi
echo "test.sh: failed: ${failed[*]}; see the output above" >&2
exit 1
