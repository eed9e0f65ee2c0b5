"""An aserpc.calculators provider, as a package would install it (mlipx style included)."""
from ase.calculators.lj import LennardJones


def good():
    return {
        "SoftLJ": {"factory": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 2.0}},
        "FnLJ": {"factory_fn": LennardJones, "args": [], "kwargs": {"epsilon": 2.0}},
    }


def broken():
    raise RuntimeError("provider exploded")
