#!/bin/bash
# Builds an optimised tree without sanitizers (build-bench/, or $LMQ_BENCH_BUILD)
# and runs bench/latency; arguments go to it (--quick, --samples N, --help ...).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LMQ_BENCH_BUILD:-$root/build-bench}
# Warnings are CI's business (scripts/test.sh builds with -Werror); an -O3-only
# warning must not stop a measurement.
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLMQ_SANITIZE=OFF -DLMQ_WERROR=OFF -DLMQ_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j"${LMQ_JOBS:-2}" --target latency labmqd
exec "$build/bench/latency" "$@"
