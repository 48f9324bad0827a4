#!/bin/bash
# Builds labmq with ThreadSanitizer (clang-14, LMQ_TSAN) into build-tsan/ (or
# $LMQ_TSAN_BUILD) and runs the daemon-level tests under it: the ones where
# the broker, device threads, the supervisor and clients run at once. A race
# anywhere, in a test or in a labmqd it starts, fails the test (TSan's exit
# status 66). libzmq is not instrumented: tests/tsan.supp says how that is
# handled. Arguments go to ctest (e.g. -R broker).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LMQ_TSAN_BUILD:-$root/build-tsan}
tests=(device daemon labmqd events workers supervise pool proto local locks liveness flow)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { CC=clang-14 cmake -S "$root" -B "$build" -DLMQ_TSAN=ON >"$log" 2>&1 &&
       cmake --build "$build" -j"${LMQ_JOBS:-2}" --target "${tests[@]/#/test_}" labmqd stuck_driver >>"$log" 2>&1; }; then
  cat "$log" >&2
  echo "tsan.sh: the ThreadSanitizer build failed" >&2
  exit 1
fi
export TSAN_OPTIONS="suppressions=$root/tests/tsan.supp:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
# Some kernels randomise mmap with more bits than this TSan's memory layout
# allows ("unexpected memory mapping"); without address randomisation it runs
# everywhere, and labmqd inherits the setting from the tests.
norand=()
if setarch "$(uname -m)" -R true 2>/dev/null; then
  norand=(setarch "$(uname -m)" -R)
fi
cd "$build"
regex="^($(IFS='|'; echo "${tests[*]}"))\$"
exec "${norand[@]}" ctest --output-on-failure -R "$regex" "$@"
