#!/bin/bash
# Installs the build tree into a scratch prefix, then builds and runs outside
# programs against it, with find_package(labmq) and with pkg-config alone:
# main.c, and the C snippet of README.md ("From C"), extracted here so the
# README and this test cannot drift apart. Neither build names libzmq: the
# package must bring it, as its API takes a ZeroMQ context.
# $2: extra compiler flags (the sanitizers, when the library was built with them).
set -euo pipefail
build=$1 flags=${2:-} src=$(cd "$(dirname "$0")" && pwd)
readme="$src/../../README.md"
work=$(mktemp -d /tmp/lmq-consumer-XXXXXX)
trap 'rm -rf "$work"' EXIT

# The first ```c block after the "### From C" heading. Its #include lines go
# first; the statements become the body of main().
awk '/^### From C/ { sec = 1; next }
     sec && /^```c$/ { code = 1; next }
     code && /^```$/ { exit }
     code { print }' "$readme" > "$work/block.c"
if ! grep -q lmq_proxy_new "$work/block.c"; then
  echo "run.sh: no C snippet found under '### From C' in $readme" >&2
  exit 1
fi
{
  echo "/* Extracted from README.md by tests/consumer/run.sh. */"
  grep '^#include' "$work/block.c"
  echo "int main(void)"
  echo "{"
  grep -v '^#include' "$work/block.c" | sed 's/^/    /'
  echo "    return 0;"
  echo "}"
} > "$work/snippet.c"

cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"

# find_package(labmq)
cmake -S "$src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  -DLMQ_SNIPPET="$work/snippet.c" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$work/cfg.log"
if ! cmake --build "$work/build" > "$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  echo "run.sh: building against find_package(labmq) failed" >&2
  exit 1
fi
LD_LIBRARY_PATH="$work/prefix/lib:${LD_LIBRARY_PATH:-}" "$work/build/consumer"

# pkg-config alone: exactly what the README tells a user to write.
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
cc_pc() { # output, source
  # shellcheck disable=SC2046 # pkg-config prints several words on purpose
  if ! cc -std=c11 -Wall -Wextra -Werror $flags "$2" -o "$1" $(pkg-config --cflags --libs labmq) 2> "$work/cc.log"; then
    cat "$work/cc.log" >&2
    echo "run.sh: cc $2 \$(pkg-config --cflags --libs labmq) failed" >&2
    exit 1
  fi
}
cc_pc "$work/consumer-pc" "$src/main.c"
LD_LIBRARY_PATH="$work/prefix/lib" "$work/consumer-pc"
cc_pc "$work/snippet-pc" "$work/snippet.c"

# The snippet runs too, against no daemon (a private, empty runtime dir): it
# reports the missing daemon and still ends cleanly.
mkdir -m 700 "$work/run"
for exe in "$work/build/readme_snippet" "$work/snippet-pc"; do
  if ! XDG_RUNTIME_DIR="$work/run" LD_LIBRARY_PATH="$work/prefix/lib" "$exe" > "$work/out" 2> "$work/err"; then
    cat "$work/out" "$work/err" >&2
    echo "run.sh: the README snippet ($exe) failed" >&2
    exit 1
  fi
  if ! grep -q '^lost 0$' "$work/out" || ! grep -q 'no daemon answers' "$work/err"; then
    cat "$work/out" "$work/err" >&2
    echo "run.sh: the README snippet ($exe) printed something unexpected" >&2
    exit 1
  fi
done
echo "find_package(labmq) and pkg-config labmq both build and run main.c and the README snippet"
