#!/bin/bash
# Installs the Debian 12 packages labmq needs to build, test and run its
# examples -- only those that are missing, so a second run touches nothing
# and needs no network. Run as root, or as a user with sudo.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config clang
  clang-14 libclang-rt-14-dev util-linux
  libzmq3-dev libjansson-dev libcyaml-dev libyaml-dev libmuparser-dev libserialport-dev libusb-1.0-0-dev libhdf5-dev check
  umockdev libumockdev-dev libglib2.0-dev
  python3-zmq python3-numpy python3-h5py python3-pytest
  libwebsockets-dev chromium chromium-driver python3-selenium
)

missing=()
for p in "${pkgs[@]}"; do
  # db:Status-Abbrev "ii " = installed; anything else (absent, half-removed) needs apt.
  if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" != "ii " ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ((EUID == 0)); then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "setup-deps: missing packages (${missing[*]}) and not root, no sudo: install them and rerun" >&2
  exit 1
fi

echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh container has empty package lists; update only now that we know we need them.
# apt is chatty even with -qq (debconf notes); keep its output for failures only.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${sudo[@]}" apt-get update -qq &&
       "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup-deps: apt-get failed" >&2
  exit 1
fi
