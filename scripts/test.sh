#!/bin/bash
# README command 2: build everything with AddressSanitizer + UBSan into
# build-asan/ and run the whole test suite. Exit status is ctest's.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

scripts/setup-deps.sh

jobs=${LMQ_JOBS:-2}
cmake -S . -B build-asan -DLMQ_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"

cd build-asan
# Tests spawn their own daemons on private temp-dir endpoints, so they can
# run side by side. (A time-out then still names the slow test.)
set +e
ctest --output-on-failure -j"$jobs"
rc=$?
set -e
if ((rc == 0)); then
  echo "test.sh: all tests passed"
else
  echo "test.sh: ctest failed (exit $rc); see the output above" >&2
fi
exit "$rc"
