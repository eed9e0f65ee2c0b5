"""ASE's ``Calculator.check_state``, computed without numpy's slow ``allclose``.

ASE compares the atoms a calculator last computed with the atoms it is asked about through
``compare_atoms``, which calls ``np.allclose`` (~20 µs through numpy's Python layers) at least
four times — twice per MD step on the client (VelocityVerlet asks for forces before and after
moving the atoms) and once per request in the worker: more than the rest of either end costs
on a small molecule. :func:`compare_atoms` gives exactly ASE's answer without it: integers by
their bytes, small arrays element by element in Python, larger ones with one ufunc reduction.

One source, two homes: ``pyhost/aserpc_state.py`` is embedded in the Go binary next to the
worker's helper; ``clientpy/src/aserpc/_state.py`` is a copy made by ``go generate ./pyhost``
(``TestSharedModuleCopies`` fails when they differ). Standard library only at import time.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, Iterable, List, Optional

__all__ = ["close", "compare_atoms"]


# Arrays up to this many elements are compared element by element in Python.
_SMALL = 64


def close(a: Any, b: Any, atol: float) -> bool:
    """ASE's ``equal(a, b, atol=atol)`` (``np.allclose`` with rtol 0) for two arrays, fast.

    Integer and boolean arrays of one dtype compare by their bytes; up to ``_SMALL`` elements
    compare in Python; beyond, one ufunc reduction of ``|a - b|`` answers for finite values and
    anything else (NaN, inf) goes to ``np.allclose`` itself, so the answer is always ASE's.
    """
    import numpy as np

    if type(a) is not np.ndarray:
        a = np.asarray(a)
    if type(b) is not np.ndarray:
        b = np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.size == 0:
        return True
    if atol < 1 and a.dtype == b.dtype and a.dtype.kind in "biu":
        return a.tobytes() == b.tobytes()  # integers and booleans: close is equal
    if a.size <= _SMALL and a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        # A molecule's positions or a cell: Python floats answer as allclose(rtol=0) does
        # (equal infinities are close, NaN is never close) without numpy's per-call cost.
        la, lb = a.ravel().tolist(), b.ravel().tolist()
        # Equal lists (one C loop; NaN is never equal) are close; otherwise element by element.
        return la == lb or all(x == y or abs(x - y) <= atol for x, y in zip(la, lb))
    try:
        eq = np.equal(a, b)
        if np.logical_and.reduce(eq, axis=None):
            return True  # equal infinities included
        if a.dtype.kind == "b" or b.dtype.kind == "b":
            return False
        ne = np.logical_not(eq)  # only these: inf - inf would warn
        m = np.maximum.reduce(np.abs(np.subtract(a[ne], b[ne], dtype=np.float64)), axis=None)
    except TypeError:  # not numbers
        return bool(np.allclose(a, b, rtol=0, atol=atol))
    if m <= atol:
        return True
    if m > atol:
        return False
    return bool(np.allclose(a, b, rtol=0, atol=atol))  # NaN: infinities or NaNs


# Compared whole, as ASE does; every other name in all_changes is a per-atom array.
_CELL_PBC = ("cell", "pbc")


def _plain(x: Any) -> Any:
    """The ndarray inside an ase.cell.Cell (converting through its __array__ costs more)."""
    return getattr(x, "array", x)


_per_atom: Dict[FrozenSet[str], FrozenSet[str]] = {}  # excluded -> the per-atom names compared


def compare_atoms(old: Any, new: Any, tol: float = 1e-15,
                  excluded: Optional[Iterable[str]] = None) -> List[str]:
    """``ase.calculators.calculator.compare_atoms(old, new, tol, excluded)``: the names in
    ASE's ``all_changes`` (less ``excluded``) in which ``new`` differs from ``old``."""
    skip = frozenset(excluded) if excluded else frozenset()
    props = _per_atom.get(skip)
    if props is None:
        from ase.calculators.calculator import all_changes

        props = _per_atom[skip] = frozenset(all_changes) - skip - frozenset(_CELL_PBC)
    changes = [p for p in _CELL_PBC
               if p not in skip and not close(_plain(getattr(old, p)), _plain(getattr(new, p)), tol)]
    arrays1, arrays2 = old.arrays, new.arrays
    keys1, keys2 = arrays1.keys(), arrays2.keys()
    if keys1 != keys2:
        changes += props & (keys1 ^ keys2)
    for prop in props & keys1 & keys2:
        if not close(arrays1[prop], arrays2[prop], tol):
            changes.append(prop)
    return changes
