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
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=TESTDATA, HF_HUB_OFFLINE="1")
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
