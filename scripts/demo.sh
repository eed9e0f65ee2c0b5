#!/usr/bin/env bash
# The main job end to end, as a user runs it:
#   1. an aserpc broker;
#   2. an aserpc manager that knows how to start an argon Lennard-Jones worker
#      (ASE's LennardJones with argon parameters, passed as JSON --kwargs) but
#      starts nothing yet: scale from zero;
#   3. aserpc's Python client runs velocity-Verlet molecular dynamics of 32 argon
#      atoms through RemoteCalculator: the first step makes the manager spawn the
#      worker, then every step goes broker -> worker -> broker; the energies are
#      printed and the trajectory is checked against the same MD in-process;
#   4. everything is stopped (SIGTERM), and the script checks that no process and
#      no socket file is left behind.
# The worker embeds Debian's python3 (python3-ase, python3-numpy; see
# scripts/bootstrap.sh) in the aserpc binary.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${ASERPC_BIN:-bin/aserpc}
[ -x "$BIN" ] || go build -o "$BIN" ./cmd/aserpc
BIN=$(realpath "$BIN")
PY=/usr/bin/python3   # python3-ase, python3-zmq, python3-msgpack: scripts/bootstrap.sh

RUN=$(mktemp -d /tmp/aserpc-demo-XXXXXX)
export ASERPC_IPC_DIR="$RUN/ipc"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$RUN"
}
trap cleanup EXIT

# What the manager may start (argv, no shell): {broker} and {idle_timeout} are
# filled in by the manager; the JSON braces of --kwargs pass through untouched.
cat >"$RUN/spawn.py" <<EOF
SPAWN = {
    "LJ-Ar": {
        "command": ["$BIN", "worker", "ase.calculators.lj:LennardJones", "--name", "LJ-Ar",
                    "--kwargs", '{"sigma": 3.4, "epsilon": 0.0104, "rc": 8.5}',
                    "--python", "$PY", "--broker", "{broker}", "--idle-timeout", "{idle_timeout}",
                    "--heartbeat", "1"],
        "idle_timeout": 60,
        "start_timeout": 60,
    },
}
EOF

"$BIN" broker --log-level WARNING & pids+=($!)
"$BIN" manager --registry "$RUN/spawn.py:SPAWN" --python "$PY" --heartbeat 1 \
  --log-dir "$RUN/logs" --log-level WARNING & pids+=($!)

for _ in $(seq 200); do
  kill -0 "${pids[1]}" 2>/dev/null || { echo "the manager exited" >&2; exit 1; }
  "$BIN" status --json --timeout 200ms 2>/dev/null | grep -q '"LJ-Ar"' && break
  sleep 0.1
done
echo "== before the first request: the manager can spawn LJ-Ar, no worker runs"
"$BIN" status

PYTHONPATH=clientpy/src "$PY" - <<'PY'
import time

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from aserpc import RemoteCalculator


def argon():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))  # 32 atoms, periodic
    MaxwellBoltzmannDistribution(atoms, temperature_K=60, rng=np.random.default_rng(42))
    return atoms


remote, local = argon(), argon()
local.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.5)
with RemoteCalculator("LJ-Ar", retries=2) as calc:
    remote.calc = calc
    t0 = time.perf_counter()
    e0 = remote.get_potential_energy()  # no worker yet: the manager spawns one
    print(f"== first result after {time.perf_counter() - t0:.2f} s (worker spawned from zero)")
    md_remote = VelocityVerlet(remote, timestep=5 * units.fs)
    md_local = VelocityVerlet(local, timestep=5 * units.fs)
    print(f"{'step':>5} {'Epot/atom':>12} {'Ekin/atom':>12} {'Etot/atom':>12}   eV")
    steps, remote_s = 100, 0.0
    for block in range(10):
        t0 = time.perf_counter()
        md_remote.run(steps // 10)
        remote_s += time.perf_counter() - t0
        md_local.run(steps // 10)
        n = len(remote)
        epot, ekin = remote.get_potential_energy() / n, remote.get_kinetic_energy() / n
        print(f"{(block + 1) * steps // 10:5d} {epot:12.6f} {ekin:12.6f} {epot + ekin:12.6f}")
    per_step = remote_s / steps
    trips = calc.round_trips

drift = abs(remote.get_potential_energy() + remote.get_kinetic_energy()
            - (e0 + argon().get_kinetic_energy()))
assert np.array_equal(remote.positions, local.positions), "trajectory differs from in-process MD"
assert drift / len(remote) < 1e-3, f"energy drift {drift} eV"
print(f"== {steps} MD steps, {per_step * 1e3:.2f} ms per step, {trips} round trips; "
      f"trajectory bit-identical to in-process MD; energy drift {drift / len(remote):.1e} eV/atom")
PY

echo "== after the MD run: the worker the manager spawned"
"$BIN" status
kids=$("$BIN" status --json --timeout 1s | "$PY" -c '
import json, sys
m = json.load(sys.stdin).get("manager") or {}
print(" ".join(str(c["pid"]) for c in m.get("children") or []))')

echo "== stopping the manager (it stops its worker) and the broker"
kill -TERM "${pids[1]}"; wait "${pids[1]}" || true
kill -TERM "${pids[0]}"; wait "${pids[0]}" || true
pids=()
left=""
for p in $kids; do kill -0 "$p" 2>/dev/null && left+=" $p"; done
sockets=$(find "$RUN" -type s 2>/dev/null || true)
if [ -n "$left" ] || [ -n "$sockets" ]; then
  echo "NOT CLEAN: processes left:${left:- none}; socket files: ${sockets:-none}" >&2
  exit 1
fi
echo "== clean: no aserpc process (broker, manager, worker${kids:+ pid $kids}) and no socket file left"
