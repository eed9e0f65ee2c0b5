#!/usr/bin/env bash
# Installs what building and testing aserpc needs on a Debian 12 machine,
# skipping whatever is already there. Safe to run again.
set -euo pipefail

JUST_VERSION=1.57.0
APT_PACKAGES=(
  libzmq3-dev pkg-config            # libzmq for the broker, worker and tests (cgo)
  python3-dev python3-venv          # Debian's python3 with its shared libpython (embedded worker)
  python3-ase python3-numpy python3-zmq python3-msgpack python3-pytest  # the "system Python" case
)

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v just >/dev/null || [ "$(just --version | cut -d' ' -f2)" != "$JUST_VERSION" ]; then
  echo "bootstrap: npm install -g rust-just@$JUST_VERSION"
  sudo_ npm install -g --silent "rust-just@$JUST_VERSION" >/dev/null
fi

if ! command -v go >/dev/null; then
  echo "bootstrap: Go is required (go 1.26+); install it from https://go.dev/dl" >&2
  exit 1
fi
go mod download
