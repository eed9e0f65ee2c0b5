"""Functions the pyhost tests call inside the hosted interpreter."""
import sys
import time


def outer():
    middle()


def middle():
    inner()


def inner():
    try:
        {}["missing"]
    except KeyError as e:
        raise ValueError("inner failed") from e


def where():
    import ase
    import numpy

    import multiprocessing
    import threading

    return {"ase": ase.__file__, "numpy": numpy.__file__, "executable": sys.executable,
            "prefix": sys.prefix, "argv": sys.argv, "start_method": multiprocessing.get_start_method(allow_none=True),
            "main_thread": threading.current_thread() is threading.main_thread()}


def signal_taking_calculator():
    import signal

    from ase.calculators.lj import LennardJones

    signal.signal(signal.SIGTERM, lambda *a: None)
    return LennardJones()


def register_atexit(path):
    """Write path at exit: proves the host ran atexit handlers (it never finalises)."""
    import atexit

    def done():
        with open(path, "w") as f:
            f.write("atexit ran")

    atexit.register(done)
    print("a line the host's Close must flush", end="")


def spin():
    while True:
        pass


def numpy_work(seconds):
    """Keep numpy busy for `seconds` (many C calls, each holding the GIL)."""
    import numpy as np

    a = np.random.default_rng(0).random((300, 300))
    t = time.monotonic()
    n = 0
    while time.monotonic() - t < seconds:
        a = (a @ a) / 300.0
        n += 1
    return n


def exit_now(code):
    sys.exit(code)


def interrupt():
    raise KeyboardInterrupt("user code interrupted itself")


class _Base:
    pass


def nan_calculator():
    import numpy as np
    from ase.calculators.calculator import Calculator, all_changes

    class NaNCalc(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": float("nan"), "forces": np.zeros((len(atoms), 3))}

    return NaNCalc()


def exiting_calculator():
    from ase.calculators.calculator import Calculator, all_changes

    class ExitCalc(Calculator):
        implemented_properties = ["energy"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            sys.exit(3)

    return ExitCalc()


def typed_calculator():
    """Returns int32, float32 and bool arrays and an extra property, to check dtypes survive."""
    import numpy as np
    from ase.calculators.calculator import Calculator, all_changes

    class TypedCalc(Calculator):
        implemented_properties = ["energy", "forces", "charges", "labels", "flag"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            n = len(atoms)
            self.results = {
                "energy": float(atoms.info.get("charge", 0)) + float(atoms.arrays["tags"].sum()),
                "forces": np.asfortranarray(np.arange(3 * n, dtype=np.float32).reshape(n, 3)),
                "charges": np.arange(n, dtype=np.int32),
                "labels": np.ones(n, dtype=bool),
                "flag": np.int64(7),
            }

    return TypedCalc()


def null_calculator():
    """No work at all, so the 100k-atom benchmark measures only the transfer."""
    import numpy as np
    from ase.calculators.calculator import Calculator

    class NullCalc(Calculator):
        implemented_properties = ["energy", "forces"]

        def get_property(self, name, atoms=None, allow_calculation=True):
            if name == "forces":
                if getattr(self, "_zeros", None) is None or len(self._zeros) != len(atoms):
                    self._zeros = np.zeros((len(atoms), 3))
                return self._zeros
            return 0.0

    return NullCalc()


def h2o_handle_loop(steps, reps=5):
    """The worker's H2O LJ step through the helper's own handle(), looped in Python.

    Run embedded, this separates the cost of the shared libpython from the cost of Go driving
    the loop. Returns the best ns per step over reps runs.
    """
    import json

    import aserpc_pyhost as ap
    import numpy as np
    from ase.calculators.lj import LennardJones

    p0 = np.array([0, 0, 0.119262, 0, 0.763239, -0.477047, 0, -0.763239, -0.477047])
    p1 = p0.copy()
    p1[2] = 0.15
    nums = np.array([8, 1, 1], np.int32).tobytes()
    bufs = [[memoryview(bytearray(b)) for b in (nums, p.tobytes(), bytes(72), bytes(3))] for p in (p0, p1)]
    meta = json.dumps({"calc": ap._keep(LennardJones()), "n": 3, "properties": ["energy", "forces"]}).encode()
    out, _ = ap.handle("compute", meta, bufs[0])
    if not json.loads(out)["ok"]:
        raise RuntimeError(out)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for i in range(steps):
            ap.handle("compute", meta, bufs[i % 2])
            ap.release(())
        best = min(best, (time.perf_counter() - t) / steps)
    return best * 1e9
