"""Reference: the same calculation in plain python, as aserpc 0.1.3's worker does it.

usage: python plain.py OUT.json FACTORY KWARGS_JSON INPUT_DIR...
Each INPUT_DIR holds numbers.bin (int32), positions.bin (float64 N×3), cell.bin, pbc.bin.
Writes {dir: {"energy": float64 bits, "forces": sha256 of the float64 bytes}}.
"""
import hashlib
import importlib
import json
import os
import struct
import sys

import numpy as np
from ase import Atoms


def load(d):
    raw = {k: open(os.path.join(d, k + ".bin"), "rb").read() for k in ("numbers", "positions", "cell", "pbc")}
    numbers = np.frombuffer(raw["numbers"], "<i4")
    return Atoms(numbers=numbers, positions=np.frombuffer(raw["positions"], "<f8").reshape(-1, 3),
                 cell=np.frombuffer(raw["cell"], "<f8").reshape(3, 3), pbc=np.frombuffer(raw["pbc"], "|b1"))


def main():
    out, factory, kwargs, dirs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
    mod, _, attr = factory.partition(":")
    calc = getattr(importlib.import_module(mod), attr)(**kwargs)
    res = {}
    for d in dirs:
        atoms = load(d)
        atoms.calc = calc
        e = atoms.get_potential_energy()
        f = np.ascontiguousarray(atoms.get_forces(), "<f8")
        res[d] = {"energy": str(struct.unpack("<Q", struct.pack("<d", e))[0]),
                  "forces": hashlib.sha256(f.tobytes()).hexdigest()}
    with open(out, "w") as fh:
        json.dump(res, fh)


main()
