"""Python side of aserpc's pyhost: the code the Go worker runs in the user's interpreter.

This file and its siblings ``aserpc_state.py`` (ASE's check_state, fast) and
``aserpc_results.py`` (ASE's conventions for results), both shared with the client package, and
``aserpc_registry.py`` (discovery: what can be served and how to build it; the Go package
registry's) need only the standard library at import time and ``ase`` + ``numpy`` for the
calculator operations. They are embedded in the Go binary, written to a cache directory and
imported from there, so tracebacks name a real file and multiprocessing children can import
them. The aserpc Python package is *not* required.

Both ways of running it go through :func:`handle`:

* embedded: the Go host calls ``handle(op, meta, bufs)`` on its Python thread, with ``bufs``
  a tuple of read-only memoryviews over host memory;
* subprocess: ``python aserpc_pyhost.py --serve RFD WFD`` reads the same requests from a
  pipe (:func:`serve`) and writes the same replies.

``handle`` returns ``(meta_json_bytes, arrays)``; ``arrays`` are C-contiguous numpy arrays
that the host reads through the buffer protocol. Errors from an operation are reported in
the meta (``{"ok": false, "error": {...}}``) with type, message and formatted traceback; they
are never printed and never exit the process (SystemExit and KeyboardInterrupt included).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

def _sibling(name: str) -> Any:
    """Import a sibling module of this file (aserpc_state, aserpc_results, aserpc_registry)."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except ImportError:  # python -P / PYTHONSAFEPATH: this file's directory is not on sys.path
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), name + ".py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
        return mod


compare_atoms = _sibling("aserpc_state").compare_atoms
_results = _sibling("aserpc_results")
check_result = _results.check
InvalidResult = _results.InvalidResult


def _registry() -> Any:
    """aserpc_registry: what can be served and how to build it (the Go package registry's
    Python half), imported when first needed."""
    return _sibling("aserpc_registry")


__all__ = ["handle", "serve"]

# Timestamps of the compute path for `just bench-client` (see internal/trace): off unless
# ASERPC_TRACE names a file prefix; the points continue the Go side's numbering.
_TRACE = os.environ.get("ASERPC_TRACE") or ""
_marks: List[Tuple[int, int]] = []
_T_START, _T_ATOMS, _T_CHECKED, _T_COMPUTED, _T_END = 31, 32, 33, 34, 35


def _mark(point: int) -> None:
    _marks.append((point, time.monotonic_ns()))
    if len(_marks) >= 16384:
        _flush_marks()


def _flush_marks() -> None:
    if _marks:
        with open(f"{_TRACE}.{os.getpid()}.py", "a") as f:
            f.writelines(f"{p} {ns}\n" for p, ns in _marks)
        _marks.clear()


if _TRACE:
    import atexit

    atexit.register(_flush_marks)

# Dtypes a result array keeps, as dtype.str without the byte order (a C-level attribute, where
# dtype.name is Python code); anything else numeric is converted to float64.
_KEEP_DTYPES = ("f8", "f4", "i8", "i4", "b1")


class NonFiniteResult(ValueError):
    """A calculator returned NaN or infinity."""


class HostError(RuntimeError):
    """The host sent something this helper cannot act on."""


_objects: Dict[int, Any] = {}
_next_id = [1]
_main_ident = threading.get_ident()
_parked: List[Any] = []  # host-memory wrappers Python kept: never released
_holders: List[Any] = []  # the current job's host-memory wrappers
_COPY_BELOW = 4096  # request buffers up to this size are copied rather than wrapped
_THIS_FILE = __file__


def _keep(obj: Any) -> int:
    i = _next_id[0]
    _next_id[0] += 1
    _objects[i] = obj
    return i


def _get(i: Any) -> Any:
    try:
        return _objects[int(i)]
    except (KeyError, TypeError, ValueError):
        raise HostError(f"unknown object id {i!r}") from None


# --------------------------------------------------------------------------- errors


def _type_name(t: type) -> str:
    mod = getattr(t, "__module__", None) or "builtins"
    return f"{mod}.{getattr(t, '__qualname__', t.__name__)}"


def error_info(exc: BaseException) -> Dict[str, str]:
    """Describe an exception as type (module.qualname), message and full traceback."""
    # Drop this helper's own frames (handle -> _op_*) from the top, so the
    # traceback starts in the user's code; keep them if nothing else is left.
    tb_start = exc.__traceback__
    while tb_start is not None and tb_start.tb_frame.f_code.co_filename == _THIS_FILE:
        tb_start = tb_start.tb_next
    if tb_start is None:
        tb_start = exc.__traceback__
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
    except BaseException:  # formatting must never fail the report
        tb = ""
    try:
        msg = str(exc)
    except BaseException:
        msg = "<unprintable exception>"
    return {"type": _type_name(type(exc)), "message": msg, "traceback": tb}


def format_exception(exc: BaseException) -> bytes:
    """error_info as JSON bytes; called by the host's C layer for errors outside handle."""
    return json.dumps(error_info(exc)).encode()


# --------------------------------------------------------------------------- compute


def _array(buf: Any, dtype: str, shape: Sequence[int]) -> Any:
    """A read-only numpy array over a request buffer, without copying.

    Host memory arrives as a writable memoryview. Neither numpy nor ctypes keeps a buffer
    export on it (both release at once and keep a reference), so ``mv.release()`` cannot
    tell whether an array still points at host memory. Instead each view is wrapped in a
    ctypes array that becomes the ``base`` of every numpy array derived from it: its
    reference count says exactly whether host memory is still in use (see :func:`release`).
    """
    import numpy as np

    if isinstance(buf, memoryview) and buf.nbytes <= _COPY_BELOW:
        buf = bytes(buf)  # small: a copy is cheaper than a tracked wrapper, and cannot leak
    elif isinstance(buf, memoryview) and not buf.readonly:
        import ctypes

        buf = (ctypes.c_char * buf.nbytes).from_buffer(buf)
        _holders.append(buf)
    arr = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(tuple(shape))
    arr.flags.writeable = False
    return arr


def make_atoms(numbers: Any, positions: Any, cell: Any, pbc: Any, info: Optional[Dict[str, Any]] = None,
               arrays: Optional[Dict[str, Any]] = None) -> Any:
    """A fresh ``ase.Atoms`` from request arrays, as aserpc 0.1.3's worker builds it.

    ``Atoms`` copies positions (one copy of host memory), so it never keeps a view of it.
    """
    from ase import Atoms

    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    if info:
        atoms.info.update(info)
    for name, arr in (arrays or {}).items():
        atoms.set_array(name, arr.copy())
    return atoms


def default_properties(calc: Any, atoms: Any) -> List[str]:
    """energy and forces, and stress when the system is periodic in all three directions."""
    props = ["energy", "forces"]
    if all(atoms.pbc) and "stress" in getattr(calc, "implemented_properties", ("stress",)):
        props.append("stress")
    return props


def _stale(calc: Any, atoms: Any) -> bool:
    """Whether the calculator's cached results belong to other info or per-atom arrays.

    ASE's check_state compares only positions, numbers, cell, pbc, initial charges and
    magnetic moments, so a reused calculator would return the previous charge's or spin's
    results for the same geometry. The atoms ASE keeps with the results remember info and
    arrays, so compare those.
    """
    old = getattr(calc, "atoms", None)
    if old is None or not getattr(calc, "results", None):
        return False
    try:
        import numpy as np

        if old.info != atoms.info or set(old.arrays) != set(atoms.arrays):
            return True
        return any(not np.array_equal(old.arrays[k], v) for k, v in atoms.arrays.items()
                   if k not in ("positions", "numbers"))
    except Exception:  # values that do not compare (arrays inside info): be safe
        return True


_direct_ok: Dict[type, bool] = {}


def _direct(calc: Any) -> bool:
    """Whether calc can be driven by one ``calculate`` call for all properties.

    True for ASE ``Calculator`` subclasses that keep the base class's ``get_property``
    (almost all, MLIPs included): what ``atoms.get_*`` would return is then exactly
    ``calc.results[name]`` after ``calculate``, and doing ASE's ``check_state`` (which
    compares the atoms with numpy's isclose) once per request instead of once per
    property saves more than the rest of the worker costs.
    """
    t = type(calc)
    ok = _direct_ok.get(t)
    if ok is None:
        try:
            from ase.calculators.calculator import Calculator

            ok = isinstance(calc, Calculator) and t.get_property is Calculator.get_property
        except Exception:
            ok = False
        _direct_ok[t] = ok
    return ok


_base_check_state: Any = None


def _check_state(calc: Any, atoms: Any, tol: float = 1e-15) -> List[str]:
    """``calc.check_state(atoms)``: for ASE's own implementation, the same answer computed
    without numpy's slow ``allclose`` (ASE's ``compare_atoms``, which did half of the worker's
    Python work on a small system); a calculator that overrides ``check_state`` is asked itself.
    """
    global _base_check_state
    if _base_check_state is None:
        from ase.calculators.calculator import Calculator

        _base_check_state = Calculator.check_state
    if getattr(type(calc), "check_state", None) is not _base_check_state:
        return calc.check_state(atoms)
    old = getattr(calc, "atoms", None)
    if old is None:
        from ase.calculators.calculator import all_changes

        return list(all_changes)
    return compare_atoms(old, atoms, tol, getattr(calc, "ignored_changes", None))


def compute(calc: Any, atoms: Any, properties: Optional[Sequence[str]]) -> Dict[str, Any]:
    """Compute properties in order; names beyond energy/forces/stress go through get_property."""
    if properties is None:
        properties = default_properties(calc, atoms)
    impl = getattr(calc, "implemented_properties", ())
    if properties and _direct(calc) and all(p in impl for p in properties):
        # What get_property does per property, once for all of them: one check_state
        # (the changes matter: calculators keep state such as neighbour lists across
        # "positions" changes), one calculate.
        from ase.calculators.calculator import PropertyNotImplementedError

        if _stale(calc, atoms):
            calc.reset()
        changes = _check_state(calc, atoms)
        if changes:
            calc.reset()
        if _TRACE:
            _mark(_T_CHECKED)
        atoms.calc = calc
        if changes or any(p not in calc.results for p in properties):
            calc.calculate(atoms, list(properties), changes)
        out: Dict[str, Any] = {}
        for p in properties:
            if p not in calc.results:
                raise PropertyNotImplementedError(f"{p} not present in this calculation")
            v = calc.results[p]
            if p == "stress" and getattr(v, "shape", None) == (3, 3):
                from ase.stress import full_3x3_to_voigt_6_stress

                v = full_3x3_to_voigt_6_stress(v)
            out[p] = v
        return out
    if _stale(calc, atoms) and hasattr(calc, "reset"):
        calc.reset()
    atoms.calc = calc
    results: Dict[str, Any] = {}
    for p in properties:
        if p == "energy":
            results[p] = atoms.get_potential_energy()
        elif p == "forces":
            results[p] = atoms.get_forces()
        elif p == "stress":
            results[p] = atoms.get_stress()
        elif p in getattr(calc, "implemented_properties", ()):
            results[p] = calc.get_property(p, atoms)
        else:  # 0.1.3: whatever the calculator already holds, None if absent
            results[p] = getattr(calc, "results", {}).get(p)
    return results


def normalise(name: str, value: Any) -> Tuple[Optional[Any], Any]:
    """Split a result into (C-contiguous array, None) or (None, JSON scalar); reject non-finite.

    This runs on every property of every request, so scalars take a fast path (np.float64
    is a float) and arrays are checked with direct ufunc reductions: numpy's Python-level
    wrappers (arr.min(), np.isfinite(arr).all()) cost more than a small calculation.
    """
    import numpy as np

    if value is None or isinstance(value, (bool, str, np.bool_)):
        return None, bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise NonFiniteResult(f"non-finite {name}: {f}")
        return None, f
    if isinstance(value, (int, np.integer)):
        return None, int(value)
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"result {name!r} has unsupported type {type(value).__name__} ({arr.dtype})")
    if arr.dtype.str[1:] not in _KEEP_DTYPES:
        arr = arr.astype(np.float64)
    # min/max propagate NaN and reach +-inf without allocating a mask.
    if arr.dtype.kind == "f" and arr.size and not (
            math.isfinite(np.minimum.reduce(arr, axis=None)) and math.isfinite(np.maximum.reduce(arr, axis=None))):
        raise NonFiniteResult(f"non-finite values in {name}")
    if arr.ndim == 0 and not isinstance(value, np.ndarray):
        return None, arr.item()
    return np.ascontiguousarray(arr), None


# --------------------------------------------------------------------------- operations


def _op_bootstrap(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    if meta.get("argv"):
        sys.argv = list(meta["argv"])
    method = meta.get("start_method")
    if method:
        import multiprocessing

        try:
            multiprocessing.set_start_method(method, force=True)
        except (ValueError, RuntimeError):
            pass
    # Python shares fds 1 and 2 with the Go host and block-buffers them when
    # they are not a tty: line-buffer so output interleaves with Go's logs.
    for f in (sys.stdout, sys.stderr):
        try:
            f.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    global _main_ident
    _main_ident = threading.get_ident()
    return {"executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
            "version": sys.version, "path": sys.path, "thread": _main_ident}, []


def _op_resolve(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    r = _registry().resolve(meta["spec"], meta.get("name") or "", meta.get("args") or (), meta.get("kwargs") or {},
                meta.get("registry") or "")
    fid = _keep(r.pop("factory"))
    return dict(r, id=fid), []


def _signal_handlers() -> Dict[str, Any]:
    import signal

    return {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM")}


def _op_create(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    before = _signal_handlers()
    calc = _get(meta["factory"])()
    warnings = [f"the calculator factory installed a {name} handler; the host owns {name} and may not "
                f"see it any more" for name, h in _signal_handlers().items() if h is not before[name]]
    name = getattr(calc, "name", None)
    return {"id": _keep(calc), "class": _registry().describe(type(calc)), "warnings": warnings,
            "implemented_properties": [str(p) for p in getattr(calc, "implemented_properties", [])],
            "name": name if isinstance(name, str) else type(calc).__name__.lower(),
            "parameters": _parameters(calc)}, []


def _parameters(calc: Any) -> Dict[str, Any]:
    """``calc.todict()`` with the entries JSON can carry (what ASE writes into trajectories and
    databases as the calculator's parameters); {} for an object without ``todict``."""
    try:
        d = calc.todict()
    except Exception:
        return {}
    out: Dict[str, Any] = {}
    for k, v in (d.items() if isinstance(d, dict) else ()):
        if hasattr(v, "tolist"):
            v = v.tolist()
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError):
            continue
        out[str(k)] = v
    return out


def _op_compute(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    if _TRACE:
        _mark(_T_START)
    calc = _get(meta["calc"])
    n = int(meta["n"])
    numbers = _array(bufs[0], "<i4", (n,))
    positions = _array(bufs[1], "<f8", (n, 3))
    cell = _array(bufs[2], "<f8", (3, 3))
    pbc = _array(bufs[3], "|b1", (3,))
    extra = {a["name"]: _array(bufs[a["index"]], a["dtype"], a["shape"]) for a in meta.get("arrays", ())}
    atoms = make_atoms(numbers, positions, cell, pbc, meta.get("info"), extra)
    if _TRACE:
        _mark(_T_ATOMS)
    results = compute(calc, atoms, meta.get("properties"))
    if _TRACE:
        _mark(_T_COMPUTED)
    values: Dict[str, Any] = {}
    arrays: list = []

    def put(name: str, value: Any) -> None:
        if name in _results.CHECKED:
            value = check_result(name, value, n, type(calc))
        arr, scalar = normalise(name, value)
        if arr is None:
            values[name] = {"scalar": scalar}
        else:
            values[name] = {"index": len(arrays), "dtype": arr.dtype.str, "shape": list(arr.shape)}
            arrays.append(arr)

    for name, value in results.items():
        put(name, value)
    order = list(results)
    dropped: List[Dict[str, str]] = []
    held = getattr(calc, "results", None) if meta.get("all") else None
    if isinstance(held, dict):
        # Everything else this calculation produced, as an in-process calc.results holds it;
        # what cannot travel (or breaks ASE's conventions) is left out and reported, and
        # fails the request only when it is asked for.
        for name, value in list(held.items()):
            if not isinstance(name, str) or name in values or value is None:
                continue
            try:
                put(name, value)
            except (InvalidResult, NonFiniteResult, TypeError, ValueError) as e:
                dropped.append({"name": name, "error": f"{type(e).__name__}: {e}"})
                continue
            order.append(name)
        # calc.results' own order (extxyz writes its keys in that order, as in-process)
        order = [k for k in held if k in values] + [k for k in order if k not in held]
    if _TRACE:
        _mark(_T_END)
    out: Dict[str, Any] = {"values": values, "order": order}
    if dropped:
        out["dropped"] = dropped
    return out, arrays


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except (TypeError, ValueError):
        return repr(x)


def _op_call(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    fn = _registry().load_object(meta["target"])
    return {"result": _jsonable(fn(*(meta.get("args") or ()), **(meta.get("kwargs") or {})))}, []


def _op_list(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    return {"rows": _registry().list_calculators(meta.get("registry") or "")}, []


def _op_free(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    _objects.pop(int(meta["id"]), None)
    return {}, []


def _op_shutdown(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    import atexit

    _objects.clear()
    try:
        atexit._run_exitfuncs()
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
    return {}, []


_OPS = {
    "bootstrap": _op_bootstrap,
    "resolve": _op_resolve,
    "create": _op_create,
    "compute": _op_compute,
    "call": _op_call,
    "list": _op_list,
    "free": _op_free,
    "shutdown": _op_shutdown,
}


# One encoder and decoder for every request: json.dumps with an option builds a new encoder
# per call.
_encode = json.JSONEncoder(allow_nan=False).encode
_decode = json.JSONDecoder().decode


def handle(op: str, meta: bytes, bufs: Sequence[Any]) -> Tuple[bytes, list]:
    """Run one host operation; every exception becomes an error reply (nothing escapes)."""
    try:
        fn = _OPS.get(op)
        if fn is None:
            raise HostError(f"unknown operation {op!r}")
        out, arrays = fn(_decode(bytes(meta).decode()) if meta else {}, bufs)
        return _encode(dict(out, ok=True)).encode(), arrays
    except BaseException as e:  # SystemExit and KeyboardInterrupt are calculator errors too
        return json.dumps({"ok": False, "error": error_info(e)}).encode(), []


def _bench_inc(x: int) -> int:
    """f(x) = x + 1: the trivial function of the host's call benchmark."""
    return x + 1


def release(bufs: Sequence[Any]) -> int:
    """End a job's use of host memory; count (and park) the wrappers still referenced.

    A wrapper made by :func:`_array` is referenced only by ``_holders`` (plus the loop
    variable and getrefcount's argument) unless some array still points into it. Reference
    cycles get one gc.collect() before a buffer is declared leaked. Parked wrappers (and the
    views they reference) stay alive for good, and the host never reuses their memory.
    """
    leaked = 0
    collected = False
    for h in _holders:
        if sys.getrefcount(h) > 3 and not collected:
            import gc

            gc.collect()
            collected = True
        if sys.getrefcount(h) > 3:
            _parked.append(h)
            leaked += 1
    _holders.clear()
    for mv in bufs:
        if isinstance(mv, memoryview):
            try:
                mv.release()
            except BufferError:  # an export made directly on the view (e.g. a slice kept)
                _parked.append(mv)
                leaked += 1
    return leaked


# --------------------------------------------------------------------------- subprocess mode


def _read_exact(f: Any, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise EOFError
        got += k
    return buf


def _u(f: Any, size: int) -> int:
    return int.from_bytes(_read_exact(f, size), "little")


def serve(rfd: int, wfd: int) -> None:
    """Subprocess mode: the same operations over a pipe.

    Request: u32 len + op, u32 len + meta, u32 count, then per buffer u64 len + bytes.
    Reply: u32 len + meta, u32 count, then per array u64 len + bytes (C order).
    SIGINT interrupts a running operation (the host's cancel) and is ignored between them.
    """
    import signal

    running = [False]

    def on_sigint(signum: int, frame: Any) -> None:
        if running[0]:
            raise KeyboardInterrupt("cancelled by host")

    signal.signal(signal.SIGINT, on_sigint)
    r = os.fdopen(rfd, "rb", buffering=0)
    w = os.fdopen(wfd, "wb", buffering=0)
    while True:
        try:
            op = _read_exact(r, _u(r, 4)).decode()
        except EOFError:
            return
        meta = bytes(_read_exact(r, _u(r, 4)))
        bufs = [_read_exact(r, _u(r, 8)) for _ in range(_u(r, 4))]
        running[0] = True
        try:
            out, arrays = handle(op, meta, bufs)
        except KeyboardInterrupt as e:  # landed outside handle's own try
            out, arrays = json.dumps({"ok": False, "error": error_info(e)}).encode(), []
        finally:
            running[0] = False
        parts = [len(out).to_bytes(4, "little"), out, len(arrays).to_bytes(4, "little")]
        for a in arrays:
            mv = memoryview(a).cast("B")
            parts += [len(mv).to_bytes(8, "little"), mv]
        for p in parts:
            w.write(p)
        if op == "shutdown":
            return


if __name__ == "__main__":
    # Run as a script: import the real module so that objects pickle under its own name.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import aserpc_pyhost

    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        rfd, wfd = int(sys.argv[2]), int(sys.argv[3])
        del sys.argv[1:]
        aserpc_pyhost.serve(rfd, wfd)
        raise SystemExit(0)
    raise SystemExit("usage: aserpc_pyhost.py --serve RFD WFD")
