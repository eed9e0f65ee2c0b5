"""One chaos client process: RemoteCalculator with retries against a broker, each result
checked against the same calculator run in this process.

Usage: python client.py --broker ADDR --calc LJ --out report.json [--requests N | --until-eof]
       [--threads T] [--seed S] [--timeout MS] [--retries R]

Each thread owns a RemoteCalculator and computes a stream of different structures (clusters and
periodic boxes of 1-150 atoms, some with atoms.info and tags) exactly as a user would:
``atoms.calc = calc; atoms.get_potential_energy(); atoms.get_forces()`` (and ``get_stress()`` when
periodic). Every structure is distinct, so a result delivered to the wrong request shows up as a
wrong result, not as a coincidence.

A request is *lost* when it raises (retries exhausted, or a non-retryable error): the chaos tests
require none. It is *wrong* when a value differs from the local calculator's beyond 1e-9
(relative): the worker runs the same ase, so the numbers agree to the last few bits.

The report (JSON at --out) holds counts, the latency of every request (seconds, retries and
backoff included) and the first few failures verbatim. With --until-eof the threads run until
stdin closes (the driver decides how long); otherwise --requests in total.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from typing import Any, Dict, List

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from aserpc import RemoteCalculator

LOCAL = {"LJ": LennardJones, "EMT": EMT}
EMT_ELEMENTS = [13, 28, 29, 46, 47, 78, 79]  # Al Ni Cu Pd Ag Pt Au


def structure(rng: np.random.Generator, calc: str) -> Atoms:
    """A random structure: a rattled simple-cubic cluster or periodic box, 1-40 atoms (80%)
    or 41-150 (whose milliseconds of computing make a killed worker likely to hold a job)."""
    n = int(rng.integers(1, 41)) if rng.random() < 0.8 else int(rng.integers(41, 151))
    spacing = 1.12 if calc == "LJ" else 2.6  # near each potential's minimum
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)])[:n]
    pos = grid * spacing + rng.normal(0, 0.05 * spacing, (n, 3))
    numbers = rng.choice(EMT_ELEMENTS, n) if calc == "EMT" else np.full(n, int(rng.integers(1, 30)))
    atoms = Atoms(numbers=numbers, positions=pos)
    if rng.random() < 0.4:
        atoms.cell = np.diag([side * spacing] * 3) + rng.normal(0, 0.02, (3, 3))
        atoms.pbc = True
    if rng.random() < 0.3:
        atoms.info["charge"] = int(rng.integers(-2, 3))
        atoms.set_tags(rng.integers(0, 4, n))
    return atoms


def compute(atoms: Atoms) -> Dict[str, np.ndarray]:
    out = {"energy": np.array(atoms.get_potential_energy()), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def mismatch(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray]) -> str:
    for k, w in want.items():
        g = got.get(k)
        if g is None or np.shape(g) != np.shape(w):
            return f"{k}: shape {np.shape(g)} != {np.shape(w)}"
        if not np.allclose(g, w, rtol=1e-9, atol=1e-9):
            return f"{k}: max |diff| {np.max(np.abs(np.asarray(g) - w)):.3g}"
    return ""


class Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.ok = self.wrong = self.lost = self.round_trips = 0
        self.latencies: List[float] = []
        self.failures: List[str] = []
        self.crashed: List[str] = []

    def fail(self, kind: str, msg: str) -> None:
        with self.lock:
            setattr(self, kind, getattr(self, kind) + 1)
            if len(self.failures) < 10:
                self.failures.append(f"{kind}: {msg}")


def run_thread(args: argparse.Namespace, seed: int, quota: int, stop: threading.Event, t: Totals) -> None:
    rng = np.random.default_rng(seed)
    local = LOCAL[args.calc]()
    # check_broker=False: a client started while the broker restarts must not fail at once.
    with RemoteCalculator(args.calc, broker=args.broker, timeout=args.timeout, retries=args.retries,
                          check_broker=False) as calc:
        done = 0
        while not stop.is_set() and (quota < 0 or done < quota):
            atoms = structure(rng, args.calc)
            ref = atoms.copy()
            ref.calc = local
            want = compute(ref)
            atoms.calc = calc
            trips = calc.round_trips
            t0 = time.perf_counter()
            try:
                got = compute(atoms)
            except Exception as e:  # noqa: BLE001 - every failure is a lost request
                t.fail("lost", f"{type(e).__name__}: {e}")
                got = None
            took = time.perf_counter() - t0
            done += 1
            with t.lock:
                t.requests += 1
                t.round_trips += calc.round_trips - trips
            if got is None:
                continue
            why = mismatch(got, want)
            if why:
                t.fail("wrong", f"{len(atoms)} atoms pbc={atoms.pbc.all()}: {why}")
                continue
            with t.lock:
                t.ok += 1
                t.latencies.append(took)


def guarded(*a: Any) -> None:
    t: Totals = a[-1]
    try:
        run_thread(*a)
    except BaseException as e:  # a bug of this script, not of aserpc: reported apart
        with t.lock:
            t.crashed.append(f"{type(e).__name__}: {e}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--calc", default="LJ", choices=sorted(LOCAL))
    p.add_argument("--out", required=True)
    p.add_argument("--requests", type=int, default=-1, help="total over all threads")
    p.add_argument("--until-eof", action="store_true", help="run until stdin closes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=int, default=5000, help="RemoteCalculator timeout, ms")
    p.add_argument("--retries", type=int, default=20)
    args = p.parse_args()
    if (args.requests < 0) == (not args.until_eof):
        p.error("give --requests or --until-eof")
    logging.basicConfig(level=logging.ERROR)  # retries are counted, not logged

    stop = threading.Event()
    if args.until_eof:
        def watch() -> None:
            sys.stdin.read()
            stop.set()
        threading.Thread(target=watch, daemon=True).start()
    t = Totals()
    threads = []
    for i in range(args.threads):
        quota = -1 if args.until_eof else args.requests // args.threads + (i < args.requests % args.threads)
        th = threading.Thread(target=guarded, args=(args, args.seed * 1000 + i, quota, stop, t))
        th.start()
        threads.append(th)
    print("started", flush=True)
    for th in threads:
        th.join()
    report: Dict[str, Any] = {
        "requests": t.requests, "ok": t.ok, "wrong": t.wrong, "lost": t.lost,
        "round_trips": t.round_trips, "latencies": t.latencies, "failures": t.failures,
        "crashed": t.crashed,
    }
    with open(args.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
