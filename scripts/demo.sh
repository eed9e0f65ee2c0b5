#!/usr/bin/env bash
# The main job end to end: an aserpc broker, a worker serving ASE's
# LennardJones, and a client computing the energy and forces of a water
# molecule through them, compared with the same calculation in-process.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${ASERPC_BIN:-bin/aserpc}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/aserpc

# The worker serves ASE from Debian's python3 (python3-ase, installed by
# scripts/bootstrap.sh), embedded in the aserpc binary. Until aserpc's own
# Python client lands, the client is aserpc 0.1.3's from PyPI
# (wire-compatible with our broker and worker), in a cached venv.
VENV=${ASERPC_DEMO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/aserpc-demo/ref-0.1.3}
if [ ! -x "$VENV/bin/aserpc" ]; then
  echo "demo: creating $VENV with aserpc==0.1.3 from PyPI"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check aserpc==0.1.3
fi

RUN=$(mktemp -d /tmp/aserpc-demo-XXXXXX)
export ASERPC_IPC_DIR="$RUN/ipc"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

"$BIN" broker --log-level WARNING & pids+=($!)
"$BIN" worker LJ --python /usr/bin/python3 --heartbeat 0.5 --log-level WARNING & pids+=($!)

for _ in $(seq 100); do
  "$BIN" status --json --timeout 200ms 2>/dev/null | grep -q '"LJ"' && break
  sleep 0.1
done
"$BIN" status

"$VENV/bin/python" - <<'PY'
import os
import numpy as np
from ase.build import molecule
from ase.calculators.lj import LennardJones
from aserpc import RemoteCalculator

front = "ipc://" + os.environ["ASERPC_IPC_DIR"] + "/frontend.ipc"
water = molecule("H2O")
water.calc = RemoteCalculator("LJ", broker=front, timeout=10000)
e, f = water.get_potential_energy(), water.get_forces()

local = molecule("H2O")
local.calc = LennardJones()
assert e == local.get_potential_energy() and np.array_equal(f, local.get_forces())
print(f"H2O LennardJones through the broker: energy {e:.6f} eV, max |force| {np.abs(f).max():.6f} eV/Å (equal to in-process)")
PY
