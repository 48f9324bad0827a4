#!/bin/bash
# Installs the build tree into a scratch prefix, then builds and runs an
# outside project against it twice: with find_package(labmq) and with pkg-config.
# $2: extra compiler flags (the sanitizers, when the library was built with them).
set -euo pipefail
build=$1 flags=${2:-} src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/lmq-consumer-XXXXXX)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
cmake -S "$src" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$work/cfg.log"
cmake --build "$work/build" > "$work/build.log"
LD_LIBRARY_PATH="$work/prefix/lib:${LD_LIBRARY_PATH:-}" "$work/build/consumer"
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
cc -std=c11 $flags $(pkg-config --cflags labmq) "$src/main.c" -o "$work/consumer-pc" $(pkg-config --libs labmq) -lzmq
LD_LIBRARY_PATH="$work/prefix/lib" "$work/consumer-pc"
echo "find_package(labmq) and pkg-config labmq both work"
