"""`just bench-batch`: throughput of dynamic batching, side by side in one run.

For each model and cell size: structures/s of

* the model in process, in a plain loop (``atoms.calc = calc``; energy, forces, stress), in the
  model's own venv: what a user's script gets without aserpc;
* one by one through a worker (``--batch-size 1``), fed by ``calculate_many``;
* batched through the same worker with ``--batch-size B`` for B in 2 … 32 (up to 512 atoms a
  batch), fed by ``calculate_many`` (which keeps twice the capacity in flight).

Each rate is the best of two timed runs, after a warm-up of six batches (the steady state:
the worker has made its first measures of whether batching pays). The mean batch size is the
model calls' of the timed runs (the worker's measures of one by one included).

It prints a table of rates and ratios (batched ÷ one by one, batched ÷ in process). Run by
``go run ./bench/batch``, which builds the venv (CHGNet from its PyPI wheel, which ships its
weights; mace-torch for a small random MACE) and passes --python.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "..", "e2e", "testdata")

MODELS = {
    "chgnet": ("chgnet.model.dynamics:CHGNetCalculator", {"use_device": "cpu"}),
    "mace": ("mlipbatch.tinymace:calculator", {}),
}

INPROC = r"""
import importlib, json, sys, time
sys.path.insert(0, sys.argv[4])
sys.path.insert(0, sys.argv[5])
from bench_batch import cells
mod, _, fn = sys.argv[1].partition(":")
calc = getattr(importlib.import_module(mod), fn)(**json.loads(sys.argv[2]))
items = cells(int(sys.argv[3]), int(sys.argv[6]))
for a in items[:3]:  # warm up
    a.calc = calc; a.get_potential_energy()
t0 = time.perf_counter()
for a in items:
    a.calc = calc
    a.get_potential_energy(); a.get_forces(); a.get_stress()
print(json.dumps({"rate": len(items) / (time.perf_counter() - t0)}))
"""


def cells(size: int, n: int):
    """n distinct rattled Cu cells of size atoms (8: 2x1x1, 64: 2x2x4 of the cubic cell)."""
    from ase.build import bulk

    reps = {4: (1, 1, 1), 8: (2, 1, 1), 16: (2, 2, 1), 32: (2, 2, 2), 64: (2, 2, 4)}[size]
    out = []
    for i in range(n):
        a = bulk("Cu", a=3.61, cubic=True).repeat(reps)
        a.rattle(0.03, seed=i)
        out.append(a)
    return out


def in_process(python: str, factory: str, kwargs: dict, size: int, n: int, env: dict) -> float:
    out = subprocess.run([python, "-c", INPROC, factory, json.dumps(kwargs), str(size), HERE, TESTDATA, str(n)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rate"]


class Cluster:
    def __init__(self, binary: str, python: str, env: dict) -> None:
        self.dir = tempfile.mkdtemp(prefix="aserpc-bb-", dir="/tmp")
        self.front, self.back = f"ipc://{self.dir}/f", f"ipc://{self.dir}/b"
        self.bin, self.python, self.env = binary, python, env
        self.broker = subprocess.Popen([binary, "broker", "--frontend", self.front, "--backend", self.back,
                                        "--log-level", "WARNING"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.worker = None

    def serve(self, name: str, factory: str, kwargs: dict, batch: int) -> None:
        from aserpc import list_calculators

        self.stop_worker()
        log = open(os.path.join(self.dir, f"{name}-{batch}.log"), "w")
        self.worker = subprocess.Popen(
            [self.bin, "worker", factory, "--name", name, "--kwargs", json.dumps(kwargs), "--python", self.python,
             "--broker", self.back, "--batch-size", str(batch), "--batch-wait-ms", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        end = time.monotonic() + 120
        while list_calculators(self.front, timeout=2000).get(name, 0) < 1:
            if self.worker.poll() is not None or time.monotonic() > end:
                raise RuntimeError(open(log.name).read())
            time.sleep(0.1)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait()
            self.worker = None

    def close(self) -> None:
        self.stop_worker()
        self.broker.terminate()
        self.broker.wait()


def served(c: Cluster, name: str, size: int, n: int, batch: int) -> tuple:
    """Steady-state structures/s (best of two runs) and the mean batch size of the runs.

    Six batches' worth first: the worker warms up and makes its first measures of whether
    batching pays (docs/batching.md), which the timed runs then do not pay for."""
    from aserpc import broker_status, calculate_many

    items = cells(size, n)
    props = ["energy", "forces", "stress"]
    inflight = max(2, 2 * batch)
    calculate_many(cells(size, max(4, 6 * batch)), name, props, broker=c.front, max_in_flight=inflight,
                   progress_bar=False)
    before = broker_status(c.front)["workers"][name].get("batch") or {}
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        calculate_many(items, name, props, broker=c.front, max_in_flight=inflight, progress_bar=False)
        rates.append(n / (time.perf_counter() - t0))
    after = broker_status(c.front)["workers"][name].get("batch") or {}
    calls = after.get("batches", 0) - before.get("batches", 0)
    mean = (after.get("structures", 0) - before.get("structures", 0)) / calls if calls else 1.0
    return max(rates), mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True, help="the models' venv python")
    ap.add_argument("--bin", default=os.environ.get("ASERPC_BIN", "bin/aserpc"))
    ap.add_argument("--models", default="chgnet,mace")
    ap.add_argument("--sizes", default="8,64")
    ap.add_argument("--batches", default="2,4,8,16,32")
    ap.add_argument("--seconds", type=float, default=4.0, help="aim for this long per measurement")
    ap.add_argument("--max-batch-atoms", type=int, default=512,
                    help="skip batch sizes whose batches would hold more atoms (CPU memory and time)")
    ap.add_argument("--placement", action="store_true",
                    help="instead: CPU workers sharing the node (issue 22) — CHGNet on 64-atom Si cells, in process "
                         "vs 1 and 2 workers through the manager (default placement) vs 2 hand-started workers "
                         "with the default environment")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=TESTDATA, HF_HUB_OFFLINE="1")
    if args.placement:
        placement(args, env)
        return
    rows = []
    c = Cluster(args.bin, args.python, env)
    try:
        for model in args.models.split(","):
            factory, kwargs = MODELS[model]
            for size in map(int, args.sizes.split(",")):
                # Size the run from the in-process rate.
                probe = in_process(args.python, factory, kwargs, size, 8, env)
                n = max(16, int(probe * args.seconds))
                base = max(in_process(args.python, factory, kwargs, size, n, env) for _ in range(2))
                c.serve(model, factory, kwargs, 1)
                one, _ = served(c, model, size, n, 1)
                rows.append((model, size, "in process", base, None, None))
                rows.append((model, size, "one by one", one, 1.0, None))
                k = 2
                for b in map(int, args.batches.split(",")):
                    if b * size > args.max_batch_atoms:
                        continue
                    c.serve(model, factory, kwargs, b)
                    rate, mean = served(c, model, size, max(n, 4 * b), b)
                    rows.append((model, size, f"batch {b}", rate, mean, (rate / one, rate / base)))
                    k += 1
                print_rows(rows[-k:], n, base, one)
    finally:
        c.close()
    print("\nAll (structures/s; ratios to one by one through the worker, and to the in-process loop):")
    print_rows(rows, None, None, None)


def si_cells(n: int):
    """n distinct rattled 64-atom Si cells (the 2x2x2 cubic diamond cell)."""
    from ase.build import bulk

    out = []
    for i in range(n):
        a = bulk("Si", a=5.43, cubic=True).repeat((2, 2, 2))
        a.rattle(0.03, seed=100 + i)
        out.append(a)
    return out


SI_INPROC = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from bench_batch import si_cells
from chgnet.model.dynamics import CHGNetCalculator
calc = CHGNetCalculator(use_device="cpu")
items = si_cells(int(sys.argv[2]))
items[0].calc = calc; items[0].get_potential_energy()
t0 = time.perf_counter()
for a in items:
    a.calc = calc
    a.get_potential_energy(); a.get_forces(); a.get_stress()
print(json.dumps({"rate": len(items) / (time.perf_counter() - t0)}))
"""


def placement(args, env) -> None:
    """Issue 22's table: structures/s of CHGNet on 64-atom Si cells, side by side."""
    from aserpc import calculate_many, list_calculators

    n = 40
    clean = {k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([args.python, "-c", SI_INPROC, HERE, str(n)], capture_output=True, text=True, env=clean,
                         check=True)
    rows = [("in-process loop", json.loads(out.stdout.strip().splitlines()[-1])["rate"])]
    items = si_cells(n)
    kw = {"use_device": "cpu"}

    def run(c, name):
        calculate_many(items[:4], name, ["energy", "forces", "stress"], broker=c.front, progress_bar=False)
        t0 = time.perf_counter()
        calculate_many(items, name, ["energy", "forces", "stress"], broker=c.front, progress_bar=False)
        return n / (time.perf_counter() - t0)

    for workers in (1, 2):
        c = Cluster(args.bin, args.python, clean)
        try:
            reg = os.path.join(c.dir, "spawn.py")
            with open(reg, "w") as f:
                f.write("CONFIGS = " + repr({"chgnet": {
                    "command": [args.bin, "worker", "chgnet.model.dynamics:CHGNetCalculator", "--name", "chgnet",
                                "--kwargs", json.dumps(kw), "--python", args.python, "--broker", "{broker}"],
                    "max_workers": workers, "min_workers": workers}}) + "\n")
            mgr = subprocess.Popen([args.bin, "manager", "--registry", reg + ":CONFIGS", "--broker", c.back,
                                    "--python", args.python, "--log-dir", c.dir], env=clean,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                end = time.monotonic() + 180
                while list_calculators(c.front, timeout=2000).get("chgnet", 0) < workers:
                    if time.monotonic() > end:
                        raise RuntimeError("the manager's workers did not register")
                    time.sleep(0.2)
                rows.append((f"{workers} worker{'s' if workers > 1 else ''}, manager (default placement)", run(c, "chgnet")))
            finally:
                mgr.terminate()
                mgr.wait()
        finally:
            c.close()
    c = Cluster(args.bin, args.python, clean)
    try:
        procs = []
        for i in range(2):
            procs.append(subprocess.Popen(
                [args.bin, "worker", "chgnet.model.dynamics:CHGNetCalculator", "--name", "chgnet", "--kwargs",
                 json.dumps(kw), "--python", args.python, "--broker", c.back], env=clean,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        end = time.monotonic() + 180
        while list_calculators(c.front, timeout=2000).get("chgnet", 0) < 2:
            if time.monotonic() > end:
                raise RuntimeError("the workers did not register")
            time.sleep(0.2)
        rows.append(("2 workers by hand, default environment", run(c, "chgnet")))
        for p in procs:
            p.terminate()
            p.wait()
    finally:
        c.close()
    base = rows[0][1]
    print(f"\nCHGNet, {n} rattled 64-atom Si cells, energy+forces+stress, {os.cpu_count()} CPUs:")
    print(f"{'setup':48} {'struct/s':>9} {'÷ in process':>13}")
    for name, rate in rows:
        print(f"{name:48} {rate:9.2f} {rate / base:13.2f}")


def print_rows(rows, n, base, one) -> None:
    if n is not None:
        print(f"\n{rows[0][0]}, {rows[0][1]}-atom cells, {n} structures:")
    print(f"{'model':8} {'atoms':>5} {'how':12} {'struct/s':>9} {'mean batch':>10} {'÷ one by one':>13} {'÷ in process':>13}")
    for model, size, how, rate, mean, ratio in rows:
        m = f"{mean:.1f}" if mean else "-"
        r1 = f"{ratio[0]:.2f}" if ratio else ("1.00" if how == "one by one" else "-")
        r2 = f"{ratio[1]:.2f}" if ratio else "-"
        print(f"{model:8} {size:>5} {how:12} {rate:9.1f} {m:>10} {r1:>13} {r2:>13}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
