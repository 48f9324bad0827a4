#!/bin/bash
# The out-of-tree driver example, as a lab would use it: install labmq into a
# scratch prefix, build examples/driver-plugin against it with
# find_package(labmq), start the installed labmqd on a config that names the
# built libcounter.so by a relative path, and drive the device with the
# installed labmq CLI. Also: a .so that is not a labmq driver is refused with
# the config file's position.
# $1: the build tree; $2: extra compiler flags (the sanitizers, when labmq was built with them).
set -euo pipefail
build=$1 flags=${2:-}
src=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/lmq-plugin-XXXXXX)
pid=
cleanup() {
  [[ -n "$pid" ]] && kill -KILL "$pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "plugin test: $*" >&2
  [[ -f "$work/labmqd.log" ]] && cat "$work/labmqd.log" >&2
  exit 1
}

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
cmake -S "$src/examples/driver-plugin" -B "$work/lab/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_MODULE_LINKER_FLAGS="$flags" > "$work/cfg.log" 2>&1 || { cat "$work/cfg.log"; fail "configuring the plugin failed"; }
cmake --build "$work/lab/build" > "$work/build.log" 2>&1 || { cat "$work/build.log"; fail "building the plugin failed"; }
[[ -f "$work/lab/build/libcounter.so" ]] || fail "no libcounter.so"

bin=$work/prefix/bin
mkdir -m 700 "$work/run"
cat > "$work/lab/lab.yaml" <<YAML
control: ipc://$work/run/control
data: ipc://$work/run/data
devices:
  - name: counter1
    driver: ./build/libcounter.so
    options: {rate_hz: 5000}
YAML
# Started from elsewhere: the driver path is relative to the config file.
cd /
"$bin/labmqd" --config "$work/lab/lab.yaml" --log-level info > "$work/labmqd.log" 2>&1 &
pid=$!
labmq() { "$bin/labmq" --endpoint "ipc://$work/run/control" --timeout 5000 "$@"; }
for _ in $(seq 100); do
  labmq ls > "$work/ls" 2> /dev/null && grep -q ready "$work/ls" && break
  sleep 0.1
done
grep -q "counter1" "$work/ls" || fail "labmq ls does not list counter1"
labmq describe counter1 | grep -q "pulse counter" || fail "describe lacks the driver's description"
labmq set counter1 gate 0.01 || fail "set gate"
[[ "$(labmq get counter1 gate)" == 0.01* ]] || fail "get gate: $(labmq get counter1 gate)"
if labmq set counter1 gate 20 2> "$work/err"; then fail "gate 20 s accepted beyond its limit"; fi
grep -q "outside" "$work/err" || fail "no range error: $(cat "$work/err")"
n=$(labmq call counter1 count 10)
# 10 gates of 10 ms at 5000/s: about 500 counts
(( n > 300 && n < 700 )) || fail "count over 10 gates: $n"
kill -TERM "$pid"
wait "$pid" || fail "labmqd exited with status $?"
pid=

# Not a driver: refused at load, with the line and column of `driver:`.
cp "$work/prefix/lib/liblabmq.so" "$work/lab/notadriver.so" 2> /dev/null || cp "$(ls "$work"/prefix/lib*/liblabmq.so* | head -1)" "$work/lab/notadriver.so"
printf 'devices:\n  - name: x\n    driver: ./notadriver.so\n' > "$work/lab/bad.yaml"
if "$bin/labmqd" --check-config --config "$work/lab/bad.yaml" > "$work/out" 2>&1; then fail "a library that is no driver was accepted"; fi
grep -q "bad.yaml:3:13: .*not a labmq driver" "$work/out" || fail "unexpected error: $(cat "$work/out")"
echo "the example driver builds against the installed labmq, loads from a relative path and serves; a non-driver is refused"
