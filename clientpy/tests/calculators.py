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


class OutOfMemoryError(RuntimeError):
    """What torch raises when a CUDA allocation fails (torch.cuda.OutOfMemoryError)."""


class BatchToy(Calculator):
    """A model with a batch path (issue 27's test toy). Energy, forces, stress and per-atom
    energies are closed forms of the structure (the same whether batched or not); each call
    costs ``base`` seconds plus ``per`` per structure (batching pays), is recorded as a JSON line
    in ``$ASERPC_TEST_BATCH_LOG`` ({"kind": "batch"|"single", "n", "atoms", "keys"}), and:

    * ``batch_key`` is ``atoms.info["task"]``: structures of different tasks never share a call;
    * a call of more than ``oom_atoms`` atoms raises a torch-style ``OutOfMemoryError``;
    * a structure with ``info["poison"]`` makes the whole batch call raise (the model cannot say
      which structure was bad), and its own single call too.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, base=0.02, per=0.001, oom_atoms=0, **kwargs):
        super().__init__(**kwargs)
        self.base, self.per, self.oom_atoms = base, per, oom_atoms

    @staticmethod
    def closed_form(atoms):
        pos = atoms.get_positions()
        q = float(atoms.info.get("charge", 0))
        per_atom = 0.1 * atoms.numbers + 0.01 * (pos ** 2).sum(axis=1) + q
        r = {"energy": float(per_atom.sum()), "forces": -0.02 * pos, "energies": per_atom}
        r["free_energy"] = r["energy"] - 0.001 * len(atoms)
        if atoms.cell.rank == 3:
            c = atoms.cell.array
            r["stress"] = 1e-3 * np.array([c[0, 0], c[1, 1], c[2, 2], c[1, 2], c[0, 2], c[0, 1]])
        return r

    def _record(self, kind, atoms_list):
        path = os.environ.get("ASERPC_TEST_BATCH_LOG")
        if path:
            import json

            with open(path, "a") as f:
                f.write(json.dumps({"kind": kind, "n": len(atoms_list), "atoms": sum(len(a) for a in atoms_list),
                                    "keys": [self.batch_key(a) for a in atoms_list], "pid": os.getpid()}) + "\n")

    def batch_key(self, atoms):
        return atoms.info.get("task", "default")

    def _check(self, atoms_list):
        total = sum(len(a) for a in atoms_list)
        if self.oom_atoms and total > self.oom_atoms:
            raise OutOfMemoryError(f"CUDA out of memory. Tried to allocate {total} atoms' worth (toy limit "
                                   f"{self.oom_atoms})")
        if any(a.info.get("poison") for a in atoms_list):
            raise ValueError("poisoned structure")

    def calculate_batch(self, atoms_list, properties):
        time.sleep(self.base + self.per * len(atoms_list) * getattr(self, "batch_penalty", 1))
        self._check(atoms_list)
        self._record("batch", atoms_list)
        return [self.closed_form(a) for a in atoms_list]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self.base + self.per)
        self._check([self.atoms])
        self._record("single", [self.atoms])
        self.results = self.closed_form(self.atoms)


class Placement(LennardJones):
    """LennardJones that also reports where its worker runs: ``cpus`` (the calculating thread's
    affinity), ``thread_cpus`` (a new thread's), and the thread-count variables."""

    implemented_properties = ["energy", "forces", "cpus", "thread_cpus", "omp", "mkl", "openblas"]

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        import threading

        super().calculate(atoms, ["energy", "forces"], system_changes)
        seen = []
        t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
        t.start()
        t.join()
        self.results["cpus"] = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        self.results["thread_cpus"] = ",".join(map(str, seen[0]))
        for k, v in (("omp", "OMP_NUM_THREADS"), ("mkl", "MKL_NUM_THREADS"), ("openblas", "OPENBLAS_NUM_THREADS")):
            self.results[k] = os.environ.get(v, "")


class WarmStart(LennardJones):
    """A stateful calculator, as a DFT code is: its "SCF" starts from the last structure this
    worker computed, and needs 5 iterations when that is within 0.015 Å of the new one (a warm
    start; an MD step of these tests moves an atom by 0.01 Å), 20 otherwise. Reports ``scf_iterations`` and the worker's ``pid``."""

    implemented_properties = ["energy", "forces", "scf_iterations", "pid"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.last = None

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, ["energy", "forces"], system_changes)
        pos = self.atoms.positions
        warm = (self.last is not None and self.last.shape == pos.shape
                and float(np.abs(self.last - pos).max()) < 0.015)
        self.last = pos.copy()
        self.results["scf_iterations"] = 5 if warm else 20
        self.results["pid"] = os.getpid()


class CountedGPAW(Calculator):
    """GPAW in LCAO mode (Debian's gpaw: dzp basis, h = 0.3 Å, PBE; about 0.4 s a step for H2O):
    a real DFT code whose SCF starts from the wavefunctions of the structure it computed last.
    Reports the step's ``scf_iterations`` and the worker's ``pid``."""

    implemented_properties = ["energy", "forces", "scf_iterations", "pid"]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        from gpaw import GPAW

        self.dft = GPAW(mode="lcao", basis="dzp", h=0.30, xc="PBE", txt=None, symmetry="off")

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, ["energy", "forces"], system_changes)
        a = self.atoms.copy()
        self.results["energy"] = self.dft.get_potential_energy(a)
        self.results["forces"] = self.dft.get_forces(a)
        self.results["scf_iterations"] = int(self.dft.get_number_of_iterations())
        self.results["pid"] = os.getpid()


CALCS = {
    "gpaw": CountedGPAW,
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
    "placement": Placement,
    "warm": WarmStart,
    "batchtoy": BatchToy,
    "batchtoy_oom": lambda: BatchToy(oom_atoms=24),
    "batchtoy_slow": lambda: BatchToy(base=1.0),
    # A model that batches badly: a batch costs three times its structures one by one.
    "batchtoy_bad": lambda: _bad_batcher(),
}


def _bad_batcher():
    calc = BatchToy(base=0.005, per=0.005)
    calc.batch_penalty = 6  # batch: 5 ms + 30 ms per structure; one by one: 10 ms each
    return calc
