"""ASE's conventions for a calculator's results, checked before they reach a client.

A calculator that sets ``results["energy"] = "abc"`` or forces of the wrong shape would otherwise
be served as a success, and the error would surface far from its cause (an optimiser's
``TypeError`` many calls later). :func:`check` holds every standard ASE property to what ASE's
own ``get_*`` methods promise, with N the number of atoms of the request:

==============================  ===========================================================
``energy``, ``free_energy``,    a real scalar: Python or numpy int/float, or a 0-d array
``magmom``
``forces``                      real, shape (N, 3)
``stress``                      real, shape (6,) (Voigt, as ``Atoms.get_stress()``) or (3, 3),
                                which is sent as Voigt (``full_3x3_to_voigt_6_stress``)
``energies``, ``charges``,      real, shape (N,)
``magmoms``
``stresses``                    real, shape (N, 6) or (N, 3, 3), sent as given
``dipole``                      real, shape (3,)
==============================  ===========================================================

Real means integer or floating: booleans, complex numbers, strings, objects and ragged
sequences are refused. Other properties, and None (a property the calculator does not have,
which 0.1.3 sent as None too), pass through unchecked. A violation raises
:class:`InvalidResult`, whose type name on the wire is ``aserpc.InvalidResult``; its message
starts with the property's name and a colon.

One source, two homes: ``pyhost/aserpc_results.py`` is embedded in the Go binary next to the
worker's helper, which checks every result it sends; ``clientpy/src/aserpc/_results.py`` is a
copy made by ``go generate ./pyhost`` (``TestSharedModuleCopies`` fails when they differ), with
which the client checks what any worker sends (aserpc 0.1.3's workers check nothing).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

__all__ = ["CHECKED", "InvalidResult", "check"]


class InvalidResult(ValueError):
    """A calculator's result breaks ASE's conventions for that property."""


InvalidResult.__module__ = "aserpc"  # the wire type name: aserpc.InvalidResult

_SCALARS = frozenset(("energy", "free_energy", "magmom"))
# property -> accepted shapes; "N" is the number of atoms
_SHAPES = {
    "forces": (("N", 3),),
    "stress": ((6,), (3, 3)),
    "energies": (("N",),),
    "charges": (("N",),),
    "magmoms": (("N",),),
    "stresses": (("N", 6), ("N", 3, 3)),
    "dipole": ((3,),),
}
CHECKED = _SCALARS | frozenset(_SHAPES)


def _what(value: Any) -> str:
    """A short description of what came: type, and dtype and shape for arrays."""
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is not None and shape is not None:
        return f"{type(value).__name__} of dtype {dtype} and shape {tuple(shape)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _name(owner: Any) -> str:
    if isinstance(owner, str):
        return owner
    mod, qual = getattr(owner, "__module__", None), getattr(owner, "__qualname__", None) or repr(owner)
    return f"{mod}.{qual}" if mod else qual


def _expect(name: str, n: Optional[int]) -> str:
    """The shapes name may have, as a message reads them: "(3, 3) (3 atoms)"."""
    text = " or ".join(str(tuple(n if d == "N" and n is not None else d for d in s)).replace("'", "")
                       for s in _SHAPES[name])
    return text + (f" ({n} atoms)" if n is not None and "N" in _SHAPES[name][0] else "")


_shapes_of: Dict[Tuple[str, int], Tuple[Tuple[int, ...], ...]] = {}


def _shapes(name: str, n: int) -> Tuple[Tuple[int, ...], ...]:
    """The shapes ``name`` may have with n atoms (remembered: this runs on every result)."""
    got = _shapes_of.get((name, n))
    if got is None:
        if len(_shapes_of) > 4096:
            _shapes_of.clear()
        got = _shapes_of[name, n] = tuple(tuple(n if d == "N" else d for d in s) for s in _SHAPES[name])
    return got


def check(name: str, value: Any, n: Optional[int], owner: Any = "the calculator") -> Any:
    """Check one result against ASE's conventions; return it as it should be sent.

    Parameters
    ----------
    name:
        The property.
    value:
        What the calculator returned.
    n:
        The number of atoms of the request (None: per-atom lengths are not checked).
    owner:
        Who returned it, for the message: a description, or the calculator's class (named only
        when the check fails: this runs on every request).

    Returns
    -------
    The value itself, or for a (3, 3) ``stress`` its Voigt form.

    Raises
    ------
    InvalidResult
        The value breaks the convention for ``name``.
    """
    if name not in CHECKED or value is None:  # None: not available (0.1.3 sends that too)
        return value
    if name in _SCALARS and (type(value) is float or type(value) is int):
        return value  # the common case, first: this runs on every request
    import numpy as np

    if name in _SCALARS:
        if isinstance(value, (np.floating, np.integer)) or (
                isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu"):
            return value
        raise InvalidResult(f"{name}: {_name(owner)} returned {_what(value)}; ASE expects a real scalar (a float)")
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):  # a ragged sequence, with numpy >= 1.24
            arr = None
    if arr is None or arr.dtype.kind not in "fiu":
        kind = "a ragged sequence" if arr is None or arr.dtype.kind == "O" else _what(value)
        raise InvalidResult(f"{name}: {_name(owner)} returned {kind}; ASE expects a real array of shape {_expect(name, n)}")
    if not (arr.shape in _shapes(name, n) if n is not None else
            any(len(s) == arr.ndim and all(d == "N" or a == d for d, a in zip(s, arr.shape)) for s in _SHAPES[name])):
        raise InvalidResult(f"{name}: {_name(owner)} returned {_what(arr)}; ASE expects shape {_expect(name, n)}")
    if name == "stress" and arr.shape == (3, 3):
        from ase.stress import full_3x3_to_voigt_6_stress

        return full_3x3_to_voigt_6_stress(arr)
    return value
