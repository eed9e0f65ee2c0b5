"""In-process reference results for the e2e tests, in the interpreter that runs it.

Usage: local.py '<json>' with {"factory": "module:callable" | null, "args": [...],
"kwargs": {...}, "structures": [NAME, ...]}. Prints, per structure, its arrays
(numbers int32, positions/cell float64, little-endian, hex) and, when a factory is
given, energy/forces/stress as the hex of their float64 bytes, so that Go can
compare the worker's results bit for bit.
"""
import contextlib
import importlib
import json
import sys

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule


def build(name):
    if name == "H2O":
        return molecule("H2O")
    if name == "Cu":
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        a.rattle(0.05, seed=1)
        return a
    if name == "U":
        return Atoms("UH", positions=[[0, 0, 0], [0, 0, 1.9]])
    if name == "Ar":
        return Atoms("Ar", positions=[[0.1, 0.2, 0.3]])
    raise ValueError(name)


def hx(x, dtype):
    return np.ascontiguousarray(np.asarray(x, dtype=dtype)).astype(np.dtype(dtype).newbyteorder("<")).tobytes().hex()


def main(stdout):
    spec = json.loads(sys.argv[1])
    calc = None
    if spec.get("factory"):
        mod, _, attr = spec["factory"].partition(":")
        fn = getattr(importlib.import_module(mod), attr)
        calc = fn(*(spec.get("args") or []), **(spec.get("kwargs") or {}))
    out = {}
    for name in spec["structures"]:
        atoms = build(name)
        r = {
            "numbers": hx(atoms.numbers, np.int32),
            "positions": hx(atoms.positions, np.float64),
            "cell": hx(atoms.cell.array, np.float64),
            "pbc": [bool(b) for b in atoms.pbc],
        }
        if calc is not None:
            atoms.calc = calc
            r["energy"] = hx(atoms.get_potential_energy(), np.float64)
            r["forces"] = hx(atoms.get_forces(), np.float64)
            if atoms.pbc.all():
                r["stress"] = hx(atoms.get_stress(), np.float64)
        out[name] = r
    json.dump(out, stdout)


# Calculators may print (CHGNet announces itself): keep stdout for the JSON.
with contextlib.redirect_stdout(sys.stderr):
    main(sys.__stdout__)
