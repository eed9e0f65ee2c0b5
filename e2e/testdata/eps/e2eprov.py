"""An aserpc.calculators provider as an installed package declares it."""


def good():
    return {"EPLJ": {"factory": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 1.1}}}


def broken():
    raise RuntimeError("provider exploded")


def batching():
    """A calculator whose entry point names a batch adapter (issue 27)."""
    return {"EPBATCH": {"factory": "ase.calculators.lj:LennardJones", "kwargs": {"sigma": 1.1},
                        "batch": "e2eprov:LJBatch"}}


class LJBatch:
    """A batch adapter: each structure through a copy of the calculator; every call noted in
    $E2E_BATCH_LOG (the number of structures), so the test sees that the adapter ran."""

    def __init__(self, calc):
        self.calc = calc

    def calculate_batch(self, atoms_list, properties):
        import copy
        import os

        path = os.environ.get("E2E_BATCH_LOG")
        if path:
            with open(path, "a") as f:
                f.write(f"{len(atoms_list)}\n")
        out = []
        for a in atoms_list:
            c = copy.deepcopy(self.calc)
            c.calculate(a, list(properties), ["positions", "numbers", "cell", "pbc"])
            out.append(dict(c.results))
        return out
