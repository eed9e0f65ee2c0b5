"""Drive aserpc 0.1.3's client API for the Go interop tests.

Usage: refclient.py '<json>' where the JSON is {"broker": ADDR, "ops": [op, ...]}.
Each op runs in order and yields one result; the script prints
{"results": [...]} as JSON on stdout. Floats go through JSON with repr, so
they round-trip exactly and the Go side can compare them with ==.

Ops
---
{"op": "compute", "calc": "LJ", "local": "LJ"|"EMT"|null, "items": [ITEM, ...],
 "threads": 1, "timeout": 10000, "retries": 0, "check_broker": true}
    Each ITEM is an ase.build.molecule name ("H2O"),
    {"name": ..., "symbols": "UH", "positions": [[x, y, z], ...]}, or a
    periodic crystal {"name": ..., "bulk": "Cu", "repeat": [n, n, n],
    "rattle": stdev} (cubic cell, atoms displaced reproducibly).
    Every item gets its own RemoteCalculator (its own REQ socket); with
    threads > 1 the items are shared out over that many threads, all
    running at once. The remote energy and forces come from
    atoms.get_potential_energy() and atoms.get_forces() (two round trips,
    as a user's script makes them; with "stress": true also
    atoms.get_stress()). With "local", the same structure is
    also computed in-process with that ASE calculator. Result per item:
    {name, energy, forces, [stress,] local_energy, local_forces,
    [local_stress,] seconds} or
    {name, error_type, error, seconds}.
{"op": "list"}                 -> list_calculators(broker)
{"op": "status"}               -> broker_status(broker)
{"op": "shutdown", "calc": X}  -> shutdown_workers(X, broker)
{"op": "connect", "broker": ADDR}
    RemoteCalculator("LJ", broker=ADDR, check_broker=True) -> {"ok": true}
    or the exception.
Any op that raises yields {"error_type": ..., "error": ...}.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import molecule

from aserpc import RemoteCalculator, broker_status, list_calculators, shutdown_workers


def build(item: Any) -> tuple[str, Atoms]:
    if isinstance(item, str):
        return item, molecule(item)
    if "bulk" in item:
        from ase.build import bulk

        atoms = bulk(item["bulk"], cubic=True).repeat(item.get("repeat", [1, 1, 1]))
        atoms.rattle(stdev=item.get("rattle", 0.0), seed=1)
        return item.get("name", item["bulk"]), atoms
    atoms = Atoms(item["symbols"], positions=item["positions"])
    return item.get("name", item["symbols"]), atoms


def local_calc(kind: str):
    if kind == "LJ":
        from ase.calculators.lj import LennardJones

        return LennardJones()
    if kind == "EMT":
        from ase.calculators.emt import EMT

        return EMT()
    raise ValueError(f"unknown local calculator {kind!r}")


def failure(e: BaseException) -> dict[str, Any]:
    return {"error_type": type(e).__name__, "error": str(e)}


def compute(broker: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    items = [build(i) for i in op["items"]]
    out: list[dict[str, Any]] = [{"name": name} for name, _ in items]
    if op.get("local"):
        for res, (_, atoms) in zip(out, items):
            a = atoms.copy()
            a.calc = local_calc(op["local"])
            res["local_energy"] = float(a.get_potential_energy())
            res["local_forces"] = np.asarray(a.get_forces()).tolist()
            if op.get("stress"):
                res["local_stress"] = np.asarray(a.get_stress()).tolist()

    def one(k: int) -> None:
        _, atoms = items[k]
        res = out[k]
        t0 = time.monotonic()
        try:
            atoms = atoms.copy()
            atoms.calc = RemoteCalculator(
                op["calc"],
                broker=broker,
                timeout=op.get("timeout", 10000),
                check_broker=op.get("check_broker", True),
                retries=op.get("retries", 0),
            )
            res["energy"] = float(atoms.get_potential_energy())
            res["forces"] = np.asarray(atoms.get_forces()).tolist()
            if op.get("stress"):
                res["stress"] = np.asarray(atoms.get_stress()).tolist()
        except Exception as e:  # reported to the Go test, which decides
            res.update(failure(e))
        res["seconds"] = time.monotonic() - t0

    n = max(1, int(op.get("threads", 1)))
    if n == 1:
        for k in range(len(items)):
            one(k)
        return out

    start = threading.Barrier(n)

    def run(first: int) -> None:
        start.wait()  # every thread's first request goes out together
        for k in range(first, len(items), n):
            one(k)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    spec = json.loads(sys.argv[1])
    broker = spec["broker"]
    results: list[Any] = []
    for op in spec["ops"]:
        kind = op["op"]
        try:
            if kind == "compute":
                results.append(compute(broker, op))
            elif kind == "list":
                results.append(list_calculators(broker))
            elif kind == "status":
                results.append(broker_status(broker))
            elif kind == "shutdown":
                results.append(shutdown_workers(op["calc"], broker))
            elif kind == "connect":
                RemoteCalculator("LJ", broker=op["broker"], check_broker=True)
                results.append({"ok": True})
            else:
                raise ValueError(f"unknown op {kind!r}")
        except Exception as e:
            results.append(failure(e))
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
