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


class Broken(Calculator):
    """Results that break ASE's conventions (issue 21), one kind per number of atoms, so that any
    worker (ours, 0.1.3's) serves every kind; other sizes get good results, and a structure with
    ``len(atoms) == GOOD_STRESS_3X3`` a good stress given as a 3x3 matrix."""

    implemented_properties = ["energy", "forces", "stress"]
    # number of atoms -> (property, bad value from n)
    BAD = {
        1: ("energy", lambda n: "abc"),
        2: ("forces", lambda n: np.zeros((2, 2))),
        3: ("forces", lambda n: np.zeros((n + 1, 3))),
        4: ("forces", lambda n: [[1.0, 2.0], [3.0]] + [[0.0, 0.0, 0.0]] * (n - 2)),
        5: ("forces", lambda n: np.zeros((n, 3), dtype=complex)),
        6: ("energy", lambda n: np.array([1.0])),
        7: ("forces", lambda n: [["a", "b", "c"]] * n),
        8: ("stress", lambda n: np.zeros(5)),
    }
    GOOD_STRESS_3X3 = 9

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(atoms)
        stress = np.arange(9, dtype=float).reshape(3, 3)
        self.results = {"energy": float(n), "forces": np.full((n, 3), 0.5),
                        "stress": (stress + stress.T) if n == self.GOOD_STRESS_3X3 else np.arange(6.0)}
        if n in self.BAD:
            name, bad = self.BAD[n]
            self.results[name] = bad(n)


class Rich(LennardJones):
    """LennardJones with more in its results than energy/forces/stress, as MLIPs and DFT codes
    have: a free energy that differs from the energy (an electronic-entropy-like term of
    ``width``), per-atom charges and magnetic moments, a dipole, and a parameter of its own
    (so ``todict()`` says something)."""

    implemented_properties = LennardJones.implemented_properties + ["charges", "magmoms", "magmom", "dipole"]
    default_parameters = dict(LennardJones.default_parameters, width=0.01)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pos = atoms.get_positions()
        q = 0.01 * (pos[:, 0] - pos[:, 0].mean())
        self.results["free_energy"] = self.results["energy"] - self.parameters.width * len(atoms)
        self.results["charges"] = q
        self.results["magmoms"] = np.tanh(pos[:, 2])
        self.results["magmom"] = float(self.results["magmoms"].sum())
        self.results["dipole"] = (q[:, None] * pos).sum(axis=0)
        self.results["model_info"] = "rich-1"  # a non-standard key, as MLIPs add


class Announcing(LennardJones):
    """LennardJones that, on starting a calculation, creates ``$ASERPC_TEST_ANNOUNCE/<pid>-<ns>``
    (so a test knows which worker holds the job) and then takes ``delay`` seconds."""

    def __init__(self, delay=5.0, **kwargs):
        super().__init__(**kwargs)
        self.delay = delay

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        d = os.environ.get("ASERPC_TEST_ANNOUNCE")
        if d:
            with open(os.path.join(d, f"{os.getpid()}-{time.monotonic_ns()}"), "w") as f:
                f.write(str(time.time()))
        time.sleep(self.delay)
        super().calculate(atoms, properties or ["energy"], system_changes)


CALCS = {
    "LJ": LennardJones,
    "EMT": EMT,
    "slow20": lambda: SleepyLJ(delay=0.02),
    "slow1500": lambda: SleepyLJ(delay=1.5),
    "info": InfoCalc,
    "failing": Failing,
    "env": EnvCalc,
    "broken": Broken,
    "rich": lambda: Rich(width=0.02),
    "announce": Announcing,
}
