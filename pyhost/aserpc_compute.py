"""Building ``ase.Atoms`` from a request, computing, and encoding the results: the worker's
calculator code, run by ``aserpc_pyhost`` (the host protocol) in the user's interpreter.

It needs ``ase`` and ``numpy`` (imported when first used) and its siblings ``aserpc_state``
(ASE's check_state, fast) and ``aserpc_results`` (ASE's conventions for results).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from aserpc_results import CHECKED, InvalidResult, check as check_result
from aserpc_state import compare_atoms

__all__ = ["NonFiniteResult", "make_atoms", "atoms_for", "reuse_raw", "forget", "compute", "normalise", "encode_results",
           "calculator_info"]

# Dtypes a result array keeps, as dtype.str without the byte order (a C-level attribute, where
# dtype.name is Python code); anything else numeric is converted to float64.
_KEEP_DTYPES = ("f8", "f4", "i8", "i4", "b1")


class NonFiniteResult(ValueError):
    """A calculator returned NaN or infinity."""


NonFiniteResult.__module__ = "aserpc"  # the wire type name: aserpc.NonFiniteResult, as InvalidResult

#: Trace point of the state check (the host's numbering, see internal/trace).
T_CHECKED = 33


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


# Per calculator id: the Atoms of its last request, the request's numbers, cell and pbc bytes,
# and the numbers as that Atoms holds them (atoms_for).
_last: Dict[int, Tuple[Any, Tuple[bytes, bytes, bytes], bytes]] = {}


def atoms_for(cid: int, calc: Any, numbers: Any, positions: Any, cell: Any, pbc: Any,
              info: Optional[Dict[str, Any]] = None, arrays: Optional[Dict[str, Any]] = None) -> Any:
    """The Atoms of a request to calculator ``cid``: its previous request's Atoms with the new
    positions (and per-atom arrays) written in place, when that describes the same system,
    else a new one (:func:`make_atoms`).

    This is what an in-process calculator sees in an MD run or an optimisation: one Atoms
    whose positions change in place between calls. Building a new Atoms per request cost a
    quarter of the worker's Python time on a small molecule. It is reused only while it is
    exactly what a new one would be: same numbers, cell, pbc, info and array names, shapes
    and dtypes, no constraints, and not held by the calculator itself (``calc.atoms`` is
    ASE's copy; a calculator that kept the object gets a new one each time).
    """
    key = (numbers.tobytes(), cell.tobytes(), pbc.tobytes())
    prev = _last.get(cid)
    extra = arrays or {}
    if prev is not None and prev[1] == key and _same_system(prev[0], prev[2], calc, key, info, extra):
        a = prev[0].arrays
        a["positions"][:] = positions
        for k, v in extra.items():
            a[k][:] = v
        return prev[0]
    atoms = make_atoms(numbers, positions, cell, pbc, info, arrays)
    _last[cid] = (atoms, key, atoms.arrays["numbers"].tobytes())
    return atoms


def reuse_raw(cid: int, calc: Any, numbers: bytes, positions: Any, cell: bytes, pbc: bytes,
              info: Optional[Dict[str, Any]]) -> Any:
    """:func:`atoms_for` of a request without per-atom arrays, straight from its buffers: the
    previous Atoms with the positions' bytes copied in (no array made of the request at all),
    or None where :func:`atoms_for` must decide."""
    key = (numbers, cell, pbc)
    prev = _last.get(cid)
    if prev is None or prev[1] != key or not _same_system(prev[0], prev[2], calc, key, info, {}):
        return None
    pos = prev[0].arrays["positions"]
    if pos.dtype.str != "<f8" or not pos.flags.c_contiguous or not pos.flags.writeable:
        return None
    memoryview(pos).cast("B")[:] = positions
    return prev[0]


def _same_system(atoms: Any, numbers: bytes, calc: Any, key: Tuple[bytes, bytes, bytes],
                 info: Optional[Dict[str, Any]], extra: Dict[str, Any]) -> bool:
    """Whether ``atoms`` (a previous request's, which had these numbers, cell and pbc) still
    is what :func:`make_atoms` would build for this one, positions and array values aside."""
    try:
        a = atoms.arrays
        return bool(getattr(calc, "atoms", None) is not atoms and not atoms.constraints
                    and len(a) == 2 + len(extra) and atoms.info == (info or {})
                    and a["numbers"].tobytes() == numbers and atoms.cell.array.tobytes() == key[1]
                    and atoms.pbc.tobytes() == key[2]
                    and all(k in a and a[k].shape == v.shape and a[k].dtype == v.dtype for k, v in extra.items()))
    except Exception:  # info the calculator filled with what does not compare (arrays)
        return False


def forget(cid: int) -> None:
    """Drop what :func:`atoms_for` keeps for a calculator (it was freed)."""
    _last.pop(cid, None)


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


def compute(calc: Any, atoms: Any, properties: Optional[Sequence[str]],
            mark: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Compute properties in order; names beyond energy/forces/stress go through get_property.

    ``mark`` (the host's trace, ``ASERPC_TRACE``) is called with ``T_CHECKED`` after the
    state check."""
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
        if mark is not None:
            mark(T_CHECKED)
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
    # A sum propagates NaN and inf: finite, all are. Otherwise min/max say (a sum of finite
    # values may overflow); neither allocates a mask.
    if arr.dtype.kind == "f" and arr.size and not math.isfinite(np.add.reduce(arr, axis=None)) and not (
            math.isfinite(np.minimum.reduce(arr, axis=None)) and math.isfinite(np.maximum.reduce(arr, axis=None))):
        raise NonFiniteResult(f"non-finite values in {name}")
    if arr.ndim == 0 and not isinstance(value, np.ndarray):
        return None, arr.item()
    return np.ascontiguousarray(arr), None


def encode_results(calc: Any, results: Dict[str, Any], n: int, all_results: bool, held: Any = None,
                   arrays: Optional[list] = None) -> Tuple[Dict[str, Any], list, List[str], List[Dict[str, str]]]:
    """What the host sends back: ``(values, arrays, order, dropped)``.

    Each result is held to ASE's conventions (``aserpc_results``) and split by
    :func:`normalise` into a scalar or an array (``values[name]`` names its index in
    ``arrays``, appended to the given list). With ``all_results``, every other entry of
    ``held`` (a batch's results dict of the structure; by default ``calc.results``) follows.
    """
    values: Dict[str, Any] = {}
    if arrays is None:
        arrays = []

    def put(name: str, value: Any) -> None:
        if name in CHECKED:
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
    if not all_results:
        held = None
    elif held is None:
        held = getattr(calc, "results", None)
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
    return values, arrays, order, dropped


def calculator_info(calc: Any) -> Dict[str, Any]:
    """What a worker tells a client that asks it to describe itself: ASE's name,
    ``implemented_properties`` and parameters (``todict()``)."""
    name = getattr(calc, "name", None)
    return {"implemented_properties": [str(p) for p in getattr(calc, "implemented_properties", [])],
            "name": name if isinstance(name, str) else type(calc).__name__.lower(),
            "parameters": _parameters(calc)}


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
