"""Calculators the test workers serve: `--registry tests/calculators.py:CALCS`.

Loaded by aserpc's worker and by aserpc 0.1.3's, in their own Pythons; needs only ase and numpy.
"""

import os
import time

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones


class SleepyLJ(LennardJones):
    """LennardJones that takes ``delay`` seconds per calculation."""

    def __init__(self, delay=0.02, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        time.sleep(self.delay)
        super().calculate(atoms, properties or ["energy"], system_changes)


class InfoCalc(Calculator):
    """Reports what reached it: energy = charge + 10*spin, the Python types of charge/spin,
    per-atom tags, and typed results (int32 counts, a 3x3 matrix)."""

    implemented_properties = ["energy", "forces", "info_types", "tags_seen", "counts", "matrix", "energies"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        charge = atoms.info.get("charge", 0)
        spin = atoms.info.get("spin", 0)
        n = len(atoms)
        self.results = {
            "energy": float(charge) + 10.0 * float(spin),
            "forces": np.zeros((n, 3)),
            "info_types": f"{type(charge).__name__},{type(spin).__name__}",
            "tags_seen": np.asarray(atoms.get_tags(), dtype=float),
            "counts": np.arange(n, dtype=np.int32),
            "matrix": np.arange(9, dtype=float).reshape(3, 3),
            "energies": np.full(n, float(charge) / max(n, 1)),
        }


class Failing(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        raise ValueError("this calculator always fails")


class EnvCalc(LennardJones):
    """LennardJones that also reports the worker's OPENBLAS_THREAD_TIMEOUT ("" when unset)."""

    implemented_properties = ["energy", "forces", "blas_timeout"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, ["energy", "forces"], system_changes)
        self.results["blas_timeout"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")


CALCS = {
    "LJ": LennardJones,
    "EMT": EMT,
    "slow20": lambda: SleepyLJ(delay=0.02),
    "slow1500": lambda: SleepyLJ(delay=1.5),
    "info": InfoCalc,
    "failing": Failing,
    "env": EnvCalc,
}
