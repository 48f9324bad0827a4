#!/bin/bash
# Builds the libFuzzer targets with clang + ASan/UBSan into build-fuzz/ and
# fuzzes one for a while: scripts/fuzz.sh [SECONDS] [proto|scpi] (default 120 s,
# the wire codec). New inputs that reach new code land in build-fuzz/corpus-NAME;
# a crash leaves a crash-* file to add to the target's corpus in tests/fuzz/
# once fixed. Needs clang and libclang-rt-14-dev.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-120}
target=${2:-proto}
case $target in
  proto) seeds=$root/tests/fuzz/corpus ;;
  scpi) seeds=$root/tests/fuzz/corpus_scpi ;;
  *) echo "fuzz.sh: unknown target '$target' (proto or scpi)" >&2; exit 2 ;;
esac
build=$root/build-fuzz
CC=clang cmake -S "$root" -B "$build" -DLMQ_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"${LMQ_JOBS:-2}" --target "fuzz_$target"
mkdir -p "$build/corpus-$target"
cd "$build"
exec "./tests/fuzz_$target" -max_total_time="$seconds" -max_len=4096 "corpus-$target" "$seeds"
