"""What :class:`~aserpc.RemoteCalculator` and :func:`~aserpc.calculate_many` share: the broker
address, the retry delays, and a structure as it travels in a request."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import protocol
from .config import load_config

__all__ = ["DEFAULT_PROPERTIES", "atoms_extension", "backoff_delay", "default_properties", "encode_atoms"]

#: What a calculator is assumed to implement until its worker says (0.1.3's list).
DEFAULT_PROPERTIES = ("energy", "forces", "stress")

#: Per-atom arrays never sent: numbers and positions travel in the 0.1.3 part; momenta
#: change every MD step and no potential reads them (ask for them with ``arrays=[...]``).
_NOT_SENT = frozenset(("numbers", "positions", "momenta"))


def _broker(broker: Optional[str]) -> str:
    return broker if broker else load_config().ipc_frontend


def backoff_delay(attempt: int, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with equal jitter: in [d/2, d) with d = min(cap, base * 2**attempt)."""
    d = min(cap, base * (2 ** attempt))
    return d / 2 + random.random() * d / 2


def atoms_extension(atoms: Any) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(info, arrays) of ``atoms`` as they travel in the request extension, or None when empty.

    info: the JSON-like entries of ``atoms.info`` (numpy scalars as Python ones; other
    objects are skipped). arrays: every per-atom array but numbers, positions and momenta.
    """
    info: Dict[str, Any] = {}
    for k, v in atoms.info.items():
        if isinstance(k, str):
            try:
                info[k] = protocol.jsonable(v)
            except TypeError:
                pass  # objects such as a constraint or a calculator do not travel
    arrays: Dict[str, Any] = {}
    for k, a in atoms.arrays.items():
        if k not in _NOT_SENT:
            try:
                arrays[k] = protocol.encode_array(a)
            except TypeError:
                pass
    if not info and not arrays:
        return None
    return info, arrays


def encode_atoms(atoms: Any, properties: Sequence[str], info: Any, arrays: Any, typed_results: bool,
                 extra: Any, max_size: int) -> bytes:
    """The request payload for ``atoms``, refused (:class:`InvalidInputError`) when no worker
    could compute it or the broker would not accept it."""
    protocol.check_structure(len(atoms), atoms.positions, atoms.cell.array)
    payload = protocol.encode_request(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
                                      properties, info=info, arrays=arrays,
                                      typed_results=typed_results, extra=extra)
    protocol.check_size(payload, max_size)
    return payload


def default_properties(atoms: Any, implemented: Sequence[str] = DEFAULT_PROPERTIES) -> List[str]:
    """energy and forces, and stress when ``atoms`` is periodic in 3D (of those implemented)."""
    out = [p for p in ("energy", "forces") if p in implemented]
    if "stress" in implemented and atoms.pbc.all() and atoms.cell.rank == 3:
        out.append("stress")
    return out
