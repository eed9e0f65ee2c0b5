#!/usr/bin/env bash
# The main job end to end: an aserpc broker, a worker serving ASE's
# LennardJones from Debian's python3 (embedded in the aserpc binary), and
# aserpc's Python client computing the energy and forces of a water molecule
# and of a copper crystal (with stress) through them, compared with the same
# calculations in-process.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${ASERPC_BIN:-bin/aserpc}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/aserpc
PY=/usr/bin/python3   # python3-ase, python3-zmq, python3-msgpack: scripts/bootstrap.sh

RUN=$(mktemp -d /tmp/aserpc-demo-XXXXXX)
export ASERPC_IPC_DIR="$RUN/ipc"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$RUN"; }
trap cleanup EXIT

"$BIN" broker --log-level WARNING & pids+=($!)
"$BIN" worker LJ --python "$PY" --heartbeat 0.5 --log-level WARNING & pids+=($!)

for _ in $(seq 100); do
  "$BIN" status --json --timeout 200ms 2>/dev/null | grep -q '"LJ"' && break
  sleep 0.1
done
"$BIN" status

PYTHONPATH=clientpy/src "$PY" - <<'PY'
import numpy as np
from ase.build import bulk, molecule
from ase.calculators.lj import LennardJones
from aserpc import RemoteCalculator

for name, make in [("H2O", lambda: molecule("H2O")), ("Cu fcc", lambda: bulk("Cu", cubic=True))]:
    remote, local = make(), make()
    with RemoteCalculator("LJ") as calc:
        remote.calc = calc
        e, f = remote.get_potential_energy(), remote.get_forces()
        s = remote.get_stress() if remote.pbc.all() else None
        trips = calc.round_trips
    local.calc = LennardJones()
    assert e == local.get_potential_energy() and np.array_equal(f, local.get_forces())
    if s is not None:
        assert np.array_equal(s, local.get_stress())
    extra = f", stress {s[0]:.6f} eV/Å³ (xx)" if s is not None else ""
    print(f"{name}: energy {e:.6f} eV, max |force| {np.abs(f).max():.6f} eV/Å{extra}"
          f" — {trips} round trip, bit-identical to in-process")
PY
