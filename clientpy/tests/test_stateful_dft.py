"""A real stateful code behind two workers (issue 20): GPAW (Debian's ``gpaw``, LCAO) restarts
each SCF from the wavefunctions of the structure it computed last. An H2O MD run through aserpc
with a session, or with affinity, lands every step on one worker and needs exactly the SCF
iterations of the same run in process, with the same results; without affinity (0.1.3's least
recently used worker) the steps alternate between the workers, each sees a structure two steps
old, and the counts differ (the test can fail).

Determinism: GPAW in one process with one thread reproduces its energies and forces bit for bit
from run to run and from process to process (checked with float.hex), so in-process and remote
runs are compared exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import procs

pytestmark = pytest.mark.skipif(procs.WORKER_KIND != "ours", reason="affinity and sessions are aserpc's broker's")

try:
    import gpaw  # noqa: F401
except ImportError:  # pragma: no cover - bootstrap installs it
    gpaw = None

needs_gpaw = pytest.mark.skipif(gpaw is None, reason="no GPAW for this python: apt-get install gpaw gpaw-data "
                                                     "(scripts/bootstrap.sh does)")

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# One MD run, as a user would write it: the calculator is built by CALC (in-process GPAW or a
# RemoteCalculator); prints per force call the energy (float.hex), forces, SCF iterations, pid.
MD = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from ase import units
    from ase.build import molecule
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    sys.path.insert(0, {tests!r})
    from calculators import CountedGPAW
    from aserpc import RemoteCalculator

    atoms = molecule("H2O")
    atoms.center(vacuum=3.0)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = {calc}
    steps = []

    def record():
        r = atoms.calc.results
        steps.append([float(r["energy"]).hex(), [float(x).hex() for x in np.ravel(r["forces"])],
                      int(r["scf_iterations"]), int(r["pid"])])

    t0 = time.perf_counter()
    atoms.get_forces()
    record()
    md = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    md.attach(record, interval=1)
    md.run({steps})
    wall = time.perf_counter() - t0
    close = getattr(atoms.calc, "close", None)
    if close:
        close()
    print(json.dumps({{"steps": steps[:1] + steps[2:], "wall": wall}}))
""")
# (md.attach also records at step 0, the same call as the first record: dropped.)


def run_md(calc: str, steps: int = int(os.environ.get("ASERPC_STATEFUL_STEPS", "6"))) -> dict:
    script = MD.format(tests=os.path.dirname(os.path.abspath(__file__)), calc=calc, steps=steps)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **ONE_THREAD)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_gpaw
def test_gpaw_md_keeps_its_worker(broker):
    def remote(**kw):
        # Two fresh workers per run: none remembers another run's structures.
        ws = [broker.worker("gpaw", registry=True, extra_env=ONE_THREAD) for _ in range(2)]
        opts = "".join(f", {k}={v!r}" for k, v in kw.items())
        try:
            return run_md(f"RemoteCalculator('gpaw', broker={broker.frontend!r}{opts})")
        finally:
            for w in ws:
                w.stop()
            broker.wait_count("gpaw", 0)

    ref = run_md("CountedGPAW()")
    runs = {"session": remote(session=True), "affinity": remote(), "none": remote(affinity=False)}
    iters = {k: [s[2] for s in r["steps"]] for k, r in [("in-process", ref), *runs.items()]}
    print()
    for k, r in [("in-process", ref), *runs.items()]:
        dE = max(abs(float.fromhex(a[0]) - float.fromhex(b[0])) for a, b in zip(r["steps"], ref["steps"]))
        print(f"  {k:>10}: SCF iterations {iters[k]} (total {sum(iters[k])}), workers "
              f"{len({s[3] for s in r['steps']})}, max |E - E(in-process)| {dE:.1e} eV, wall {r['wall']:.2f} s")
    assert iters["in-process"][1] < iters["in-process"][0], "GPAW did not start warm in process"
    for k in ("session", "affinity"):
        steps = runs[k]["steps"]
        assert len({s[3] for s in steps}) == 1, (k, [s[3] for s in steps])
        assert iters[k] == iters["in-process"], (k, iters)
        for i, (got, want) in enumerate(zip(steps, ref["steps"])):
            assert got[0] == want[0] and got[1] == want[1], f"{k}: step {i} differs from in-process"
    none = runs["none"]["steps"]
    assert len({s[3] for s in none}) == 2, [s[3] for s in none]
    assert iters["none"] != iters["in-process"] and sum(iters["none"]) > sum(iters["in-process"]), iters
