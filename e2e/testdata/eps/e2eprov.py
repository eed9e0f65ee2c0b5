"""An aserpc.calculators provider as an installed package declares it."""


def good():
    return {"EPLJ": {"factory": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 1.1}}}


def broken():
    raise RuntimeError("provider exploded")
