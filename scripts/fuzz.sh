#!/bin/bash
# Builds the libFuzzer targets with clang + ASan/UBSan into build-fuzz/ and
# fuzzes the wire codec for a while (default 120 s). New inputs that reach new
# code land in build-fuzz/corpus; a crash leaves a crash-* file to add to
# tests/fuzz/corpus once fixed. Needs clang and libclang-rt-14-dev.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-120}
build=$root/build-fuzz
CC=clang cmake -S "$root" -B "$build" -DLMQ_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"${LMQ_JOBS:-2}" --target fuzz_proto
mkdir -p "$build/corpus"
cd "$build"
exec ./tests/fuzz_proto -max_total_time="$seconds" -max_len=4096 corpus "$root/tests/fuzz/corpus"
