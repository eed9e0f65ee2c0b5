"""The drop-in contract: a RemoteCalculator is indistinguishable from the calculator it serves.

Every test runs the same ASE feature twice — with the calculator in this process and with a
RemoteCalculator served by a real worker process (same Python, same ASE) — and requires the
same numbers, bit for bit, and the same files. Calculators: EMT, LJ, and ``rich`` (LJ with a
free energy that differs from the energy, per-atom charges and magnetic moments, a dipole, a
non-standard result and a parameter of its own; tests/calculators.py).

Differences that are inherent are listed in the README ("Differences from in-process") and
asserted here too, so that the list stays true.
"""

from __future__ import annotations

import copy
import io
import multiprocessing
import os
import pickle
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.constraints import FixAtoms, FixBondLength
from ase.io import read, write
from ase.optimize import BFGS, FIRE, LBFGS

import calculators
import procs
from aserpc import RemoteCalculator

pytestmark = pytest.mark.skipif(procs.WORKER_KIND != "ours",
                                reason="the drop-in contract needs aserpc's worker (a 0.1.3 worker "
                                       "returns only what was asked and never describes itself)")

KINDS = ("EMT", "LJ", "rich")


def local(kind):
    return {"EMT": EMT, "LJ": LennardJones, "rich": lambda: calculators.Rich(width=0.02)}[kind]()


@pytest.fixture(scope="module")
def served(aserpc_bin):
    """A broker with one worker each of EMT, LJ and rich; yields a RemoteCalculator factory."""
    b = procs.Broker(binary=aserpc_bin).start(timeout=5.0)
    b.worker("EMT")
    b.worker("LJ")
    b.worker("rich", registry=True)

    def remote(kind, **kw):
        return RemoteCalculator(kind, broker=b.frontend, **kw)

    remote.broker = b
    yield remote
    b.close()


def structure(kind, periodic=True):
    """A rattled structure each calculator handles (EMT: Cu; LJ units: sigma = 1)."""
    if kind == "EMT":
        a = bulk("Cu", cubic=True) * (2, 1, 1) if periodic else molecule("CH3CH2OH")
    else:
        a = bulk("Ar", "fcc", a=1.6, cubic=True) * (2, 1, 1)
        if not periodic:
            a.pbc = False
            a.cell = None
    a.rattle(0.02, seed=7)
    return a


# A worker's calculator lives on between requests, and EMT and LJ keep a neighbour list while
# atoms move less than its skin: after other structures with the same atomic numbers, it sums
# the same pairs in another order than a fresh in-process calculator, and the last bits differ
# (~1e-16 relative; README: "Differences from in-process"). Numbers are compared to that;
# test_neb shows bit-for-bit equality where both sides share a history.
RTOL, ATOL = 1e-12, 1e-13


def same(x, y):
    """Equal results: the same shape and dtype kind, values equal to rounding (floats) or
    exactly (anything else)."""
    if isinstance(x, (np.ndarray, float, complex)) or isinstance(y, (np.ndarray, float, complex)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.dtype.kind != y.dtype.kind:
            return False
        if x.dtype.kind in "fc":
            return np.allclose(x, y, rtol=RTOL, atol=ATOL)
        return np.array_equal(x, y)
    return x == y


def outcome(fn):
    """fn()'s value, or the class of ASE error it raised (compared by issubclass)."""
    try:
        return fn()
    except PropertyNotImplementedError:
        return PropertyNotImplementedError


# ------------------------------------------------------------------ the calculator itself


@pytest.mark.parametrize("kind", KINDS)
def test_describes_itself_like_the_served_calculator(served, kind):
    """implemented_properties, name and todict() are the served calculator's, known before
    the first calculation (SumCalculator and vdW corrections read them when built)."""
    here, there = local(kind), served(kind)
    assert there.implemented_properties == list(here.implemented_properties)
    assert there.round_trips == 1  # one describe-only request, computing nothing
    assert there.implemented_properties and there.round_trips == 1  # asked once
    atoms = structure(kind)
    atoms.calc = there
    atoms.get_potential_energy()
    assert there.name == here.name
    atoms2 = atoms.copy()
    atoms2.calc = here
    atoms2.get_potential_energy()
    assert there.todict() == here.todict()
    assert there.served["class"].endswith("." + type(here).__qualname__)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("periodic", [True, False], ids=["periodic", "molecule"])
def test_every_property_and_all_results_in_one_round_trip(served, kind, periodic):
    """Each implemented property as get_property gives it in-process (value or refusal), and
    calc.results after one calculation holds what the in-process calc.results holds."""
    here, there = local(kind), served(kind)
    a, b = structure(kind, periodic), structure(kind, periodic)
    a.calc, b.calc = here, there
    assert same(a.get_potential_energy(), b.get_potential_energy())
    trips = there.round_trips
    for key, value in here.results.items():
        assert key in there.results, f"{key} missing from the remote results"
        assert same(value, there.results[key]), key
    # force_consistent=True reads free_energy: no second calculation, as in-process
    assert same(outcome(lambda: a.get_potential_energy(force_consistent=True)),
                outcome(lambda: b.get_potential_energy(force_consistent=True)))
    assert there.round_trips == trips
    for name in here.implemented_properties:
        x = outcome(lambda: here.get_property(name, a))
        y = outcome(lambda: there.get_property(name, b))
        assert same(x, y), name


@pytest.mark.parametrize("kind", KINDS)
def test_bit_for_bit_from_a_fresh_worker(served, kind):
    """A worker's first calculations are an in-process calculator's, bit for bit: the same
    float64 bytes in, the same code, the same bytes out (the versions matrix runs this on
    every Python the worker embeds)."""
    name = f"{kind}-fresh"
    served.broker.worker(kind, name=name, registry=kind == "rich")
    here, there = local(kind), RemoteCalculator(name, broker=served.broker.frontend)
    for step in range(3):
        a = structure(kind)
        a.positions[0, 0] += 0.01 * step
        b = a.copy()
        a.calc, b.calc = here, there
        b.get_stress()
        a.get_stress()
        for k, v in here.results.items():
            w = there.results[k]
            assert type(w) is type(v) or (np.asarray(v).dtype == np.asarray(w).dtype), k
            assert np.array_equal(np.asarray(v), np.asarray(w)), f"{k} differs in step {step}"


def test_non_standard_results_travel(served):
    b = structure("rich")
    b.calc = served("rich")
    b.get_forces()
    assert b.calc.results["model_info"] == "rich-1"
    assert b.calc.results["charges"].shape == (len(b),)


# ------------------------------------------------------------------ optimizers, filters, MD


def run_both(kind, served, build, drive):
    """drive(atoms) on build() in-process and remote; returns both atoms."""
    a, b = build(), build()
    a.calc, b.calc = local(kind), served(kind)
    drive(a)
    drive(b)
    return a, b


def assert_same_atoms(a, b):
    assert same(a.positions, b.positions)
    assert same(a.cell.array, b.cell.array)
    assert same(a.get_potential_energy(), b.get_potential_energy())


def fix_symmetry():
    pytest.importorskip("spglib", reason="FixSymmetry needs spglib (apt python3-spglib)")
    try:
        from ase.constraints import FixSymmetry
    except ImportError:  # ASE < 3.23
        from ase.spacegroup.symmetrize import FixSymmetry
    return FixSymmetry


CONSTRAINTS = {
    "FixAtoms": lambda a: FixAtoms(indices=[0, 1]),
    "FixBondLength": lambda a: FixBondLength(0, 1),
    "FixSymmetry": lambda a: fix_symmetry()(a),
}


@pytest.mark.parametrize("opt", [BFGS, FIRE, LBFGS], ids=lambda o: o.__name__)
@pytest.mark.parametrize("constraint", sorted(CONSTRAINTS))
def test_optimizers_with_constraints(served, opt, constraint):
    def build():
        if constraint == "FixSymmetry":
            a = bulk("Cu", cubic=True) * (2, 2, 2)
            del a[0]  # a vacancy: the neighbours relax along symmetric paths
        else:
            a = structure("EMT")
        a.set_constraint(CONSTRAINTS[constraint](a))
        return a

    a, b = run_both("EMT", served, build, lambda x: opt(x, logfile=None).run(fmax=1e-4, steps=8))
    assert_same_atoms(a, b)


def cell_filters():
    """The cell filters this ASE has (ase.filters since 3.23, ase.constraints before)."""
    import ase.constraints

    try:
        import ase.filters as home
    except ImportError:  # ASE < 3.23
        home = ase.constraints
    return [getattr(home, n) for n in ("UnitCellFilter", "ExpCellFilter", "FrechetCellFilter") if hasattr(home, n)]


@pytest.mark.parametrize("filt", cell_filters(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["EMT", "rich"])
def test_cell_filters(served, filt, kind):
    a, b = run_both(kind, served, lambda: structure(kind),
                    lambda x: BFGS(filt(x), logfile=None).run(fmax=1e-4, steps=6))
    assert_same_atoms(a, b)
    assert same(a.get_stress(), b.get_stress())


@pytest.mark.parametrize("kind", KINDS)
def test_molecular_dynamics(served, kind):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    def drive(x):
        MaxwellBoltzmannDistribution(x, temperature_K=300, rng=np.random.RandomState(3))
        VelocityVerlet(x, 1 * units.fs, logfile=None).run(10)
        Langevin(x, 1 * units.fs, temperature_K=300, friction=0.02, logfile=None,
                 rng=np.random.RandomState(5)).run(10)

    a, b = run_both(kind, served, lambda: structure(kind), drive)
    assert_same_atoms(a, b)
    assert same(a.get_momenta(), b.get_momenta())


# ------------------------------------------------------------------ NEB, vibrations, phonons


def neb_images(n=3):
    initial = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(initial, "Au", 1.7, "hollow")
    initial.center(axis=2, vacuum=4.0)
    final = initial.copy()
    final.positions[-1, 0] += initial.cell[0, 0] / 2
    mask = [atom.tag > 1 for atom in initial]
    images = [initial] + [initial.copy() for _ in range(n)] + [final]
    for im in images:
        im.set_constraint(FixAtoms(mask=mask))
    return images


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-image"])
def test_neb(served, shared):
    try:
        from ase.mep import NEB
    except ImportError:  # ASE < 3.23
        from ase.neb import NEB

    def run(make_calc, shared):
        images = neb_images()
        for im in (images[0], images[-1]):
            im.calc = make_calc()
            BFGS(im, logfile=None).run(fmax=0.05, steps=20)
        neb = NEB(images, allow_shared_calculator=shared)
        neb.interpolate()
        calc = make_calc()
        for im in images[1:-1]:
            # per image: copies of one calculator (deepcopy is how workflows make them)
            im.calc = calc if shared else copy.deepcopy(calc)
        FIRE(neb, logfile=None).run(fmax=0.05, steps=5)
        return images

    there = run(lambda: served("EMT"), shared)
    # Per-image RemoteCalculators share one worker, whose one EMT keeps its neighbour list
    # between images: bit for bit what one shared in-process EMT gives, and equal to rounding
    # (EMT sums neighbours in another order) to per-image in-process EMTs (README:
    # "Differences from in-process").
    for x, y in zip(run(EMT, True), there):
        assert np.array_equal(x.positions, y.positions)
    if not shared:
        for x, y in zip(run(EMT, False), there):
            assert np.allclose(x.positions, y.positions, rtol=0, atol=1e-12)


def test_vibrations_and_phonons(served, tmp_path):
    from ase.phonons import Phonons
    from ase.vibrations import Vibrations

    freqs = []
    for tag, make in (("here", EMT), ("there", lambda: served("EMT"))):
        a = structure("EMT", periodic=False)
        a.calc = make()
        BFGS(a, logfile=None).run(fmax=0.05, steps=30)
        vib = Vibrations(a, name=str(tmp_path / f"vib-{tag}"))
        vib.run()
        freqs.append(vib.get_frequencies())
        ph = Phonons(bulk("Cu"), make(), supercell=(2, 2, 2), delta=0.05, name=str(tmp_path / f"ph-{tag}"))
        ph.run()
        ph.read(acoustic=True)
        freqs.append(ph.band_structure([[0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0.5]]))
    assert same(freqs[0], freqs[2])
    assert same(freqs[1], freqs[3])


def test_sum_calculator(served):
    from ase.calculators.mixing import SumCalculator

    def drive(x):
        x.calc = SumCalculator([x.calc, LennardJones(sigma=2.3, epsilon=0.01, rc=5.0)])
        BFGS(x, logfile=None).run(fmax=1e-4, steps=4)

    a, b = run_both("EMT", served, lambda: structure("EMT"), drive)
    assert a.calc.implemented_properties == b.calc.implemented_properties
    assert_same_atoms(a, b)


# ------------------------------------------------------------------ files


def assert_same_extxyz(t1, t2):
    """The same columns and keys in the same order, and the same values (to rounding)."""
    h1, h2 = t1.splitlines()[1], t2.splitlines()[1]
    assert re.findall(r"(\w+)=", h1) == re.findall(r"(\w+)=", h2)
    assert re.search(r"Properties=(\S+)", h1).group(1) == re.search(r"Properties=(\S+)", h2).group(1)
    x, y = read(io.StringIO(t1), format="extxyz"), read(io.StringIO(t2), format="extxyz")
    assert same(x.positions, y.positions) and sorted(x.calc.results) == sorted(y.calc.results)
    for k in x.calc.results:
        assert same(x.calc.results[k], y.calc.results[k]), k


@pytest.mark.parametrize("kind", KINDS)
def test_trajectory_extxyz_and_db_keep_every_result(served, kind, tmp_path):
    import ase.db
    from ase.io.trajectory import Trajectory

    texts, rows, trajs = [], [], []
    for tag, calc in (("here", local(kind)), ("there", served(kind))):
        a = structure(kind)
        a.calc = calc
        a.get_forces()
        a.get_stress()  # (remote: came with the forces; see test_prefetch_off_results_as_asked)
        with Trajectory(str(tmp_path / f"{tag}.traj"), "w") as t:
            t.write(a)
        trajs.append(read(str(tmp_path / f"{tag}.traj")))
        buf = io.StringIO()
        write(buf, a, format="extxyz")
        texts.append(buf.getvalue())
        with ase.db.connect(str(tmp_path / f"{tag}.db")) as db:
            db.write(a)
        rows.append(ase.db.connect(str(tmp_path / f"{tag}.db")).get(id=1))
    assert_same_extxyz(*texts)  # per-atom energies and free_energy included
    x, y = trajs
    assert sorted(x.calc.results) == sorted(y.calc.results)
    for k in x.calc.results:
        assert same(x.calc.results[k], y.calc.results[k]), k
    assert x.calc.name == y.calc.name
    assert x.calc.parameters == y.calc.parameters
    r, s = rows
    assert (r.calculator, r.calculator_parameters) == (s.calculator, s.calculator_parameters)
    for k in ("energy", "free_energy", "forces", "stress", "energies", "charges", "magmoms", "dipole"):
        assert same(r.get(k), s.get(k)), k


def test_prefetch_off_results_as_asked(served):
    """For a periodic system the stress comes with energy and forces in one round trip (a
    cell filter then costs one round trip per step, not two), so calc.results may hold a
    stress the in-process calculator computes only when asked; prefetch=False asks only
    for what ASE asks, and files match in-process ones whatever was asked."""
    texts = []
    for seed, calc in ((100, EMT()), (100, served("EMT", prefetch=False)), (101, served("EMT"))):
        # (a structure the worker has not seen: for one it has just computed, the worker's
        # calculator still holds — and sends — that calculation's stress)
        a = structure("EMT")
        a.rattle(0.01, seed=seed)
        a.calc = calc
        a.get_forces()
        buf = io.StringIO()
        write(buf, a, format="extxyz")
        texts.append(buf.getvalue())
    assert_same_extxyz(texts[0], texts[1])
    assert "stress=" in texts[2]  # (EMT of ASE >= 3.23 computes it anyway, ASE 3.22's only when asked)


# ------------------------------------------------------------------ copies and processes


def test_copies_keep_state_and_compute(served):
    a = structure("rich")
    a.calc = served("rich")
    e = a.get_potential_energy()
    assert a.copy().calc is None  # as for any calculator: Atoms.copy() does not copy it
    b = copy.deepcopy(a)
    assert b.calc is not a.calc and b.calc.results.keys() == a.calc.results.keys()
    assert b.get_potential_energy() == e and b.calc.round_trips == 0  # results travelled
    b.positions[0, 0] += 0.05
    assert b.get_potential_energy() != e and b.calc.round_trips == 1  # its own connection
    c = pickle.loads(pickle.dumps(a.calc))
    assert (c.calc_name, c.broker, c.timeout, c.name, c.implemented_properties) == (
        a.calc.calc_name, a.calc.broker, a.calc.timeout, a.calc.name, a.calc.implemented_properties)
    a.calc.close()
    assert a.get_forces() is not None  # the original is unaffected by its copies


def _energy_of(args):
    calc, positions = args
    a = structure("EMT")
    a.positions = positions
    a.calc = calc
    return a.get_potential_energy(), os.getpid()


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_process_pool(served, method):
    """Calculators pickled into a multiprocessing pool compute there (each child its own
    connection) and give what the parent's in-process calculator gives."""
    calc = served("EMT")
    base = structure("EMT")
    base.calc = calc
    base.get_potential_energy()  # a used calculator (a socket, a lock, results) must travel
    jobs = []
    for i in range(4):
        p = base.positions.copy()
        p[0, 0] += 0.01 * i
        jobs.append((calc, p))
    env = os.environ.get("PYTHONPATH")
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        got = pool.map(_energy_of, jobs)
    assert env == os.environ.get("PYTHONPATH")
    assert len({pid for _, pid in got}) >= 1 and all(pid != os.getpid() for _, pid in got)
    for (e, _), (_, p) in zip(got, jobs):
        a = structure("EMT")
        a.positions = p
        a.calc = EMT()
        assert e == a.get_potential_energy()
