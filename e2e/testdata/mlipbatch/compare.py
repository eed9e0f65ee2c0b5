"""Batched results against single in-process results, for a real model.

    python compare.py ref FACTORY KWARGS_JSON OUT.npz EXTRA    (in the model's venv: one by one, in process)
    python compare.py served CALC BROKER REF.npz TOL EXTRA     (the client: calculate_many through a batching worker)

EXTRA is a comma-separated list of the model's own per-atom results to compare too (CHGNet's
magmoms, MACE's per-atom energies), besides energy, forces and stress.

The structures are a mixed set: periodic bulk cells of different sizes and elements, a slab,
molecules in a non-periodic box, rattled, with and without stress.
"""

import json
import sys

import numpy as np


def structures():
    from ase.build import bulk, fcc111, molecule

    out = []
    rng = np.random.default_rng(11)
    for sym, a, rep in [("Cu", 3.6, (2, 2, 2)), ("Al", 4.05, (2, 2, 1)), ("Si", 5.43, (1, 1, 1)),
                        ("Fe", 2.87, (2, 2, 2)), ("Cu", 3.6, (1, 1, 1))]:
        s = bulk(sym, a=a, cubic=sym != "Fe").repeat(rep)
        s.rattle(0.05, seed=int(rng.integers(1000)))
        out.append(s)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.rattle(0.03, seed=3)
    out.append(slab)
    for name in ["H2O", "CH4", "C6H6", "NH3", "CO2"]:
        m = molecule(name)
        m.rattle(0.02, seed=5)
        m.center(vacuum=4.0)  # a box, not periodic (CHGNet needs a lattice)
        out.append(m)
    return out


PROPS = ["energy", "forces", "stress"]


def wanted(a, extra=()):
    return (PROPS if all(a.pbc) else ["energy", "forces"]) + list(extra)


def ref(factory, kwargs, out, extra):
    import importlib

    mod, _, fn = factory.partition(":")
    calc = getattr(importlib.import_module(mod), fn)(**json.loads(kwargs))
    data = {}
    for i, a in enumerate(structures()):
        a.calc = calc
        data[f"{i}.energy"] = a.get_potential_energy()
        data[f"{i}.forces"] = a.get_forces()
        if all(a.pbc):
            data[f"{i}.stress"] = a.get_stress()
        for p in filter(None, extra.split(",")):
            data[f"{i}.{p}"] = np.asarray(calc.results[p])
    np.savez(out, **data)


def served(calc_name, broker, ref_path, tol, extra):
    from aserpc import broker_status, calculate_many

    want = np.load(ref_path)
    items = structures()
    extra = [p for p in extra.split(",") if p]
    worst = {}
    for rnd in range(2):  # the second round with every batch warm
        # Mixed batches both times: the default properties (stress for the periodic ones),
        # then energy, forces and the model's own per-atom results for all.
        res = calculate_many(items, calc_name, None, broker=broker, max_in_flight=2 * len(items))
        more = calculate_many(items, calc_name, ["energy", "forces"] + extra, broker=broker,
                              max_in_flight=2 * len(items)) if extra else [{}] * len(items)
        for i, (a, r, m) in enumerate(zip(items, res, more)):
            for p in wanted(a) + extra:
                got = m[p] if p in extra else r[p]
                d = float(np.max(np.abs(np.asarray(got) - want[f"{i}.{p}"])))
                worst[p] = max(worst.get(p, 0.0), d)
    st = broker_status(broker)["workers"][calc_name]
    print(json.dumps({"max_abs_diff": worst, "batch": st.get("batch")}))
    bad = {p: d for p, d in worst.items() if d > tol}
    if bad:
        sys.exit(f"batched results differ from single in-process ones beyond {tol}: {bad}")


if __name__ == "__main__":
    if sys.argv[1] == "ref":
        ref(*sys.argv[2:6])
    else:
        served(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6])
