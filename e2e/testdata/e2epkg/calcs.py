"""Factories that the e2e tests serve with ``aserpc worker e2epkg.calcs:NAME``."""
from __future__ import annotations

import time

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones


def lj(sigma: float, epsilon: float = 1.0) -> LennardJones:
    """A factory taking positional and keyword arguments (--args/--kwargs)."""
    return LennardJones(sigma=sigma, epsilon=epsilon)


class Slow(LennardJones):
    """LJ that sleeps ``seconds`` in every calculation, holding the GIL in C-sized slices."""

    def __init__(self, seconds: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(self.seconds)
        super().calculate(atoms, properties, system_changes)


class Exits(LennardJones):
    """LJ that calls sys.exit() for a single atom (as a careless script might)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if len(atoms) == 1:
            raise SystemExit("calculator called exit")
        super().calculate(atoms, properties, system_changes)


class NaN(Calculator):
    """Returns a NaN energy and infinite forces."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = float("nan")
        f = np.zeros((len(atoms), 3))
        f[0, 0] = np.inf
        self.results["forces"] = f


def broken_factory():
    raise RuntimeError("factory exploded: no model file")


class Null(Calculator):
    """Zero energy and forces at no cost: what serving costs beyond the calculation."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = 0.0
        self.results["forces"] = np.zeros((len(atoms), 3))
