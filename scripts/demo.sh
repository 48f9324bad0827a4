#!/bin/bash
# README command 1: build labmq, start the simulated lab, and run the I-V
# sweep example in C and in Python against it; then drive a (simulated) Rigol
# DP832 over SCPI/TCP through the scpi driver, as a real one would be.
#
# The daemon gets endpoints in a private temp dir, so the demo never collides
# with a labmqd you already run, and is always stopped on the way out.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "dependencies"
scripts/setup-deps.sh

step "build (Release) into build/"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
# Only what the demo runs (the daemon, the CLI, the C example); scripts/test.sh
# builds and runs the tests.
cmake --build build -j"${LMQ_JOBS:-2}" --target labmqd labmq_cli iv_scan labmq-siminst

labmqd=build/workers/labmqd/labmqd
cli=build/tools/labmq
iv_scan=build/examples/iv_scan
siminst=build/tools/siminst/labmq-siminst

tmp=$(mktemp -d "${TMPDIR:-/tmp}/labmq-demo.XXXXXX")
control="ipc://$tmp/control"
data="ipc://$tmp/data"
daemon_pid=
# stop_daemon TENTHS: SIGTERM, then true once the daemon is gone within TENTHS x 0.1 s.
stop_daemon() {
  kill -TERM "$daemon_pid" 2>/dev/null || true
  for _ in $(seq "$1"); do kill -0 "$daemon_pid" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
sim_pid=
cleanup() {
  # Give it a moment to stop cleanly, then make sure.
  if [[ -n "$daemon_pid" ]] && ! stop_daemon 50; then kill -KILL "$daemon_pid" 2>/dev/null || true; fi
  [[ -n "$sim_pid" ]] && kill -TERM "$sim_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

results=()
failed=0
record() { # record NAME STATUS
  if (($2 == 0)); then results+=("  ok      $1"); else results+=("  FAILED  $1 (exit $2)"); failed=1; fi
}
show_log() { echo "--- labmqd log ($tmp/labmqd.log) ---" >&2; tail -n 30 "$tmp/labmqd.log" >&2 || true; }

step "start labmqd on examples/sim-lab.yaml ($control)"
"$labmqd" --config examples/sim-lab.yaml --control "$control" --data "$data" >"$tmp/labmqd.log" 2>&1 &
daemon_pid=$!

# Ready = answers a ping. Poll rather than sleep a fixed time: a loaded machine
# may need longer, an idle one much less.
ready=0
for _ in $(seq 100); do
  if ! kill -0 "$daemon_pid" 2>/dev/null; then break; fi
  if "$cli" --endpoint "$control" --timeout 500 ping >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.1
done
if ((!ready)); then
  echo "demo: labmqd did not come up" >&2
  show_log
  exit 1
fi
"$cli" --endpoint "$control" ls

step "C example: $iv_scan --endpoint $control"
set +e
"$iv_scan" --endpoint "$control"
record "examples/iv_scan.c" $?

step "Python example: /usr/bin/python3 examples/python/iv_scan.py --endpoint $control"
/usr/bin/python3 examples/python/iv_scan.py --endpoint "$control"
record "examples/python/iv_scan.py" $?

step "stop labmqd (SIGTERM)"
# Bounded: a daemon that hangs on shutdown is a failure, not a stuck demo.
if stop_daemon 100; then
  wait "$daemon_pid"
  rc=$?
  daemon_pid=
else
  echo "demo: labmqd still running 10 s after SIGTERM" >&2
  rc=124
fi
set -e
record "labmqd clean shutdown" "$rc"
((rc == 0)) || show_log

step "a real instrument's path: a simulated Rigol DP832 on TCP, driven by the scpi driver"
# labmq-siminst answers byte for byte as the supply does; labmqd drives it with
# examples/instruments/rigol-dp832.yaml, exactly as it would drive the real one.
[[ -x "$siminst" ]] || siminst=$(find build -name labmq-siminst -type f | head -1)
"$siminst" --tcp 0 examples/instruments/siminst/rigol-dp832.yaml >"$tmp/siminst.out" 2>"$tmp/siminst.log" &
sim_pid=$!
conn=
for _ in $(seq 100); do
  conn=$(grep -m1 '^tcp:' "$tmp/siminst.out" 2>/dev/null || true)
  [[ -n "$conn" ]] && break
  sleep 0.1
done
sed "s|connection: tcp:127.0.0.1:5025|connection: $conn|; s|model: rigol-dp832.yaml|model: $root/examples/instruments/rigol-dp832.yaml|" \
  examples/instruments/lab-dp832.yaml >"$tmp/lab-dp832.yaml"
"$labmqd" --config "$tmp/lab-dp832.yaml" --control "$control" --data "$data" >"$tmp/labmqd.log" 2>&1 &
daemon_pid=$!
scpi_ok=1
for _ in $(seq 100); do
  "$cli" --endpoint "$control" --timeout 500 ls 2>/dev/null | grep -q ready && break
  sleep 0.1
done
{
  "$cli" --endpoint "$control" ls &&
    "$cli" --endpoint "$control" set psu voltage 1.5 &&
    echo "read back over SCPI: psu.voltage = $("$cli" --endpoint "$control" get psu voltage)" &&
    [[ "$("$cli" --endpoint "$control" get psu voltage)" == 1.5* ]] &&
    if "$cli" --endpoint "$control" set psu voltage 40 2>"$tmp/err"; then false; else cat "$tmp/err"; fi
} || scpi_ok=0
record "DP832 over SCPI/TCP (labmq-siminst) through labmqd" $((1 - scpi_ok))
stop_daemon 100 && wait "$daemon_pid" || true
daemon_pid=
kill -TERM "$sim_pid" 2>/dev/null || true
wait "$sim_pid" 2>/dev/null || true
sim_pid=

step "summary"
printf '%s\n' "${results[@]}"
if ((failed)); then
  echo "demo: FAILED"
  exit 1
fi
echo "demo: all ok"
