"""aserpc 0.1.3's RemoteCalculator computing one structure given as hex arrays.

Usage: refclient.py BROKER CALC '<structure json from local.py>'. Prints energy,
forces and (periodic) stress as hex of their float64 bytes.
"""
import json
import sys

import numpy as np
from ase import Atoms

from aserpc import RemoteCalculator

broker, calc, s = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
atoms = Atoms(
    numbers=np.frombuffer(bytes.fromhex(s["numbers"]), "<i4"),
    positions=np.frombuffer(bytes.fromhex(s["positions"]), "<f8").reshape(-1, 3),
    cell=np.frombuffer(bytes.fromhex(s["cell"]), "<f8").reshape(3, 3),
    pbc=s["pbc"],
)
atoms.calc = RemoteCalculator(calc, broker=broker, timeout=20000)
out = {
    "energy": np.float64(atoms.get_potential_energy()).tobytes().hex(),
    "forces": np.ascontiguousarray(atoms.get_forces(), "<f8").tobytes().hex(),
}
if atoms.pbc.all():
    out["stress"] = np.ascontiguousarray(atoms.get_stress(), "<f8").tobytes().hex()
json.dump(out, sys.stdout)
