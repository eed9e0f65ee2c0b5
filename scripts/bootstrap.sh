#!/usr/bin/env bash
# Installs what building and testing aserpc needs on a Debian 12 machine,
# skipping whatever is already there. Safe to run again.
set -euo pipefail

JUST_VERSION=1.57.0
APT_PACKAGES=(
  libzmq3-dev pkg-config            # libzmq for the broker, worker and tests (cgo)
  python3-dev python3-venv          # Debian's python3 with its shared libpython (embedded worker)
  python3-ase python3-numpy python3-zmq python3-msgpack python3-pytest python3-spglib  # the "system Python" case (spglib: FixSymmetry)
  cmake make autoconf automake libtool dpkg-dev binutils  # static libzmq + libsodium for the wheels (scripts/toolchain.py)
  qemu-user-static libc6-arm64-cross mmdebstrap  # run the aarch64 binary under emulation, with an arm64 Python root (packaging tests)
  buildah                           # build and run the images of docker/ (no Docker engine here)
  prometheus                        # promtool and a real Prometheus server for the metrics tests
  slurm-wlm munge                   # a one-node SLURM cluster for the manager's srun tests (scripts/slurm-up.sh)
  gpaw gpaw-data                    # a real stateful DFT code behind two workers (affinity, sessions)
  iproute2 util-linux               # ip netns and unshare: hosts made of network namespaces (multi-host tests)
)

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# scripts/toolchain.py builds libzmq and libsodium from Debian's source packages
# (`apt-get source`), which needs a deb-src entry.
SRC_LIST=/etc/apt/sources.list.d/aserpc-src.sources
need_update=0
if [ -d /etc/apt/sources.list.d ] && ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "bootstrap: adding a deb-src entry for bookworm ($SRC_LIST)"
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
    sudo_ tee "$SRC_LIST" >/dev/null
  need_update=1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ $need_update = 1 ]; then
  sudo_ apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: apt-get install ${missing[*]}"
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
