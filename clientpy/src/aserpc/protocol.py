"""Request and response payloads (msgpack), as ``wire/doc.go`` describes them.

The first six request elements and the first four response elements are aserpc 0.1.3's,
byte for byte (``wire/testdata/vectors.json`` pins them); extensions are optional trailing
elements that 0.1.3 peers ignore:

* request element 6: ``{"arrays": {name: Array}, "info": {...}, "typed_results": true}``;
* response element 4: ``{"results": {name: Array}, "error_type": str, "traceback": str}``;

where an Array is ``{"data": bin, "dtype": str, "shape": [int, ...]}`` (``data`` may be left
out of a typed result whose float64 bytes equal the 0.1.3 bin of element 2).

The functions ``pack_request``, ``unpack_request``, ``pack_response``, ``unpack_response``
and ``get_request_info`` keep 0.1.3's names, signatures and errors.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import msgpack
import numpy as np

from . import _results
from .errors import InvalidInputError, ProtocolError, remote_error

__all__ = [
    "PROTOCOL_VERSION",
    "DTYPES",
    "Reply",
    "encode_request",
    "decode_request",
    "decode_response",
    "encode_array",
    "decode_array",
    "jsonable",
    "pack_request",
    "unpack_request",
    "pack_response",
    "unpack_response",
    "get_request_info",
]

PROTOCOL_VERSION = 1

#: dtypes an extension Array may have (numpy ``dtype.str``).
DTYPES = ("<f8", "<f4", "<i8", "<i4", "<i2", "|i1", "<u8", "<u4", "<u2", "|u1", "|b1")

_packb = msgpack.packb
_unpackb = msgpack.unpackb


def _atom_bytes(numbers: Any, positions: Any, cell: Any, pbc: Any) -> Tuple[bytes, bytes, bytes, bytes]:
    return (
        np.ascontiguousarray(numbers, dtype="<i4").tobytes(),
        np.ascontiguousarray(positions, dtype="<f8").tobytes(),
        np.ascontiguousarray(cell, dtype="<f8").reshape(9).tobytes(),
        np.ascontiguousarray(pbc, dtype="|b1").reshape(3).tobytes(),
    )


def _go_float(x: float) -> str:
    """``x`` as the Go worker prints it in the same error (NaN, +Inf, -Inf)."""
    return "NaN" if x != x else ("+Inf" if x > 0 else "-Inf") if math.isinf(x) else repr(x)


def check_structure(n_atoms: int, positions: Any, cell: Any) -> None:
    """Refuse what no calculator can compute, with the worker's wording.

    A NaN coordinate is not a calculator error: a neighbour list drops the atom and the
    energy comes back finite and wrong. Costs a few µs for small systems.

    Raises
    ------
    InvalidInputError
        No atoms, or a position or cell component that is NaN or infinite.
    """
    if n_atoms == 0:
        raise InvalidInputError("invalid structure: no atoms")
    p = np.asarray(positions, dtype=float)
    if not np.isfinite(p).all():
        i = int(np.flatnonzero(~np.isfinite(p.reshape(-1)))[0])
        raise InvalidInputError(f"invalid structure: position of atom {i // 3} is "
                                f"{_go_float(float(p.reshape(-1)[i]))} (must be finite)")
    c = np.asarray(cell, dtype=float).reshape(-1)
    if not np.isfinite(c).all():
        i = int(np.flatnonzero(~np.isfinite(c))[0])
        raise InvalidInputError(f"invalid structure: cell vector {i // 3} is {_go_float(float(c[i]))} "
                                f"in component {i % 3} (must be finite)")


def check_size(payload: bytes, max_size: int) -> None:
    """Refuse a request the broker would drop: libzmq disconnects a peer whose frame is
    over the broker's ``max_message_size``, and the client would only see a timeout.

    Raises
    ------
    InvalidInputError
        ``len(payload) > max_size``.
    """
    if len(payload) > max_size:
        raise InvalidInputError(
            f"request of {len(payload)} bytes exceeds max_message_size ({max_size} bytes); raise it "
            f"on the broker (--max-message-size) and here (ASERPC_MAX_MESSAGE_SIZE or "
            f"[tool.aserpc] max_message_size)")


def encode_array(a: Any) -> Dict[str, Any]:
    """An extension Array map for ``a`` (converted to one of :data:`DTYPES`).

    Raises
    ------
    TypeError
        ``a`` is not numeric or boolean.
    """
    arr = np.asarray(a)
    dt = arr.dtype
    if dt.str not in DTYPES:
        if dt.kind == "f":
            arr = arr.astype("<f8")
        elif dt.kind == "i":
            arr = arr.astype("<i8")
        elif dt.kind == "u":
            arr = arr.astype("<u8")
        elif dt.kind == "b":
            arr = arr.astype("|b1")
        else:
            raise TypeError(f"array of dtype {dt} cannot travel")
    return {"data": np.ascontiguousarray(arr).tobytes(), "dtype": arr.dtype.str, "shape": list(arr.shape)}


def decode_array(a: Mapping[str, Any], fallback: Optional[bytes] = None) -> np.ndarray:
    """The numpy array of an extension Array map (a writable copy).

    ``fallback`` supplies the bytes when ``data`` is left out (a typed float64 result whose
    bytes are the 0.1.3 bin of the same name).
    """
    dtype = a.get("dtype")
    if dtype not in DTYPES:
        raise ProtocolError(f"Invalid response: unsupported dtype {dtype!r}")
    shape = tuple(int(n) for n in a.get("shape", ()))
    data = a.get("data")
    if data is None:
        data = fallback
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("Invalid response: typed result without data")
    dt = np.dtype(dtype)
    if len(data) != dt.itemsize * math.prod(shape):
        raise ProtocolError(f"Invalid response: {len(data)} bytes for shape {list(shape)} of {dtype}")
    return np.frombuffer(data, dtype=dt).reshape(shape).copy()


class _Skip(Exception):
    pass


def jsonable(v: Any) -> Any:
    """``v`` as a JSON-like value (None, bool, int, float, str, list, str-keyed dict).

    numpy scalars become Python ones (an ``np.int64`` charge reaches the worker as ``int``)
    and arrays become nested lists. Raises ``TypeError`` for anything else.
    """
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        out = {}
        for k in sorted(v, key=str):
            if not isinstance(k, str):
                raise TypeError(f"info key {k!r} is not a str")
            out[k] = jsonable(v[k])
        return out
    raise TypeError(f"{type(v).__name__} cannot travel in atoms.info")


def encode_request(numbers: Any, positions: Any, cell: Any, pbc: Any, properties: Sequence[str],
                   info: Optional[Mapping[str, Any]] = None,
                   arrays: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   typed_results: bool = False,
                   extra: Optional[Mapping[str, Any]] = None) -> bytes:
    """A request payload; the extension element only when something needs it.

    ``info`` must already be JSON-like (see :func:`jsonable`) and ``arrays`` Array maps (see
    :func:`encode_array`). ``extra`` adds further extension keys.
    """
    n, p, c, b = _atom_bytes(numbers, positions, cell, pbc)
    msg: List[Any] = [PROTOCOL_VERSION, n, p, c, b, list(properties)]
    ext: Dict[str, Any] = {}
    if arrays:
        ext["arrays"] = {k: arrays[k] for k in sorted(arrays)}
    if info:
        ext["info"] = {k: info[k] for k in sorted(info)}
    if typed_results:
        ext["typed_results"] = True
    if extra:
        ext.update(extra)
    if ext:
        msg.append({k: ext[k] for k in sorted(ext)})
    return _packb(msg, use_bin_type=True)


def _unpack(data: Any) -> Any:
    try:
        return _unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack's errors have no common base across versions
        raise ProtocolError(f"Invalid response: not msgpack ({e})") from None


def decode_request(data: bytes) -> Dict[str, Any]:
    """A request payload as numpy arrays and the extension (for tests and tools)."""
    msg = _unpack(data)
    if not isinstance(msg, list) or len(msg) < 6:
        raise ProtocolError("Invalid request: expected an array of at least 6 elements")
    if msg[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"Protocol version mismatch: got {msg[0]}, expected {PROTOCOL_VERSION}")
    numbers = np.frombuffer(msg[1], dtype="<i4").copy()
    n = len(numbers)
    out: Dict[str, Any] = {
        "version": msg[0],
        "numbers": numbers,
        "positions": np.frombuffer(msg[2], dtype="<f8").reshape(n, 3).copy(),
        "cell": np.frombuffer(msg[3], dtype="<f8").reshape(3, 3).copy(),
        "pbc": np.frombuffer(msg[4], dtype="|b1").copy(),
        "properties": list(msg[5]),
        "info": {},
        "arrays": {},
        "typed_results": False,
    }
    ext = msg[6] if len(msg) > 6 else None
    if isinstance(ext, dict):
        out["info"] = ext.get("info") or {}
        out["arrays"] = {k: decode_array(a) for k, a in (ext.get("arrays") or {}).items()}
        out["typed_results"] = bool(ext.get("typed_results"))
    return out


class Reply:
    """A decoded response payload.

    Attributes
    ----------
    success, results, error:
        Elements 1–3. ``results`` values: floats, other msgpack values, and numpy arrays
        (typed ones with their dtype and shape; 0.1.3 bins as flat float64, ``forces``
        reshaped to (N, 3) when N is known).
    error_type, traceback:
        From the extension, or None.
    ext:
        The whole extension map (``{}`` when absent).
    """

    __slots__ = ("success", "results", "error", "error_type", "traceback", "ext")

    def __init__(self, success: bool, results: Dict[str, Any], error: Optional[str],
                 ext: Dict[str, Any]) -> None:
        self.success = success
        self.results = results
        self.error = error
        self.ext = ext
        et, tb = ext.get("error_type"), ext.get("traceback")
        self.error_type = et if isinstance(et, str) and et else None
        self.traceback = tb if isinstance(tb, str) and tb else None

    def raise_for_error(self) -> None:
        """Raise :class:`~aserpc.errors.RemoteError` for a failed calculation."""
        if not self.success:
            raise remote_error(self.error or "Unknown error", self.error_type, self.traceback)


def decode_response(data: Any, n_atoms: Optional[int] = None) -> Reply:
    """Decode a RESPONSE/ERROR payload (does not raise for ``success == False``).

    With ``n_atoms`` (the size of the structure sent), standard ASE properties are held to
    ASE's conventions (``aserpc._results``): a result that breaks them turns the reply into a
    failure of type ``aserpc.InvalidResult``, and a (3, 3) ``stress`` becomes Voigt's (6,).

    Raises
    ------
    ProtocolError
        Not a response, or a version other than 1 ("Protocol version mismatch: got X, expected 1").
    """
    msg = _unpack(data)
    if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[2], dict):
        raise ProtocolError(f"Invalid response: {str(msg)[:80]}")
    if msg[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"Protocol version mismatch: got {msg[0]}, expected {PROTOCOL_VERSION}")
    success = bool(msg[1])
    error = msg[3] if len(msg) > 3 else None
    ext = msg[4] if len(msg) > 4 and isinstance(msg[4], dict) else {}
    raw: Dict[str, Any] = msg[2]
    typed = ext.get("results") if success else None
    if not isinstance(typed, dict):
        typed = {}
    results: Dict[str, Any] = {}
    for name, v in raw.items():
        t = typed.get(name)
        if isinstance(t, dict):
            results[name] = decode_array(t, v if isinstance(v, bytes) else None)
        elif isinstance(v, bytes):
            # aserpc 0.1.3 sends arrays as flat float64: give the standard ones their shapes.
            arr = np.frombuffer(v, dtype="<f8").copy()
            n = n_atoms if n_atoms is not None else -1
            if name == "forces" and arr.size == 3 * n:
                arr = arr.reshape(n, 3)
            elif name == "stress" and arr.size == 9:
                arr = arr.reshape(3, 3)
            elif name == "stresses" and arr.size in (6 * n, 9 * n) and n > 0:
                arr = arr.reshape((n, 6) if arr.size == 6 * n else (n, 3, 3))
            results[name] = arr
        else:
            results[name] = v
    for name, t in typed.items():  # typed results without a 0.1.3 twin
        if name not in results and isinstance(t, dict):
            results[name] = decode_array(t)
    if success and n_atoms is not None:
        # The worker's contract (pyhost/aserpc_results.py), checked here too, for the structure
        # the client sent: a 0.1.3 worker checks nothing.
        try:
            for name in results.keys() & _results.CHECKED:
                results[name] = _results.check(name, results[name], n_atoms, "the worker's calculator")
        except _results.InvalidResult as e:
            return Reply(False, {}, str(e), dict(ext, error_type="aserpc.InvalidResult", traceback=None))
    return Reply(success, results, error if isinstance(error, str) else None, ext)


# ---------------------------------------------------------------- aserpc 0.1.3's API


def pack_request(atoms: Any, properties: Sequence[str]) -> bytes:
    """0.1.3's ``pack_request``: numbers, positions, cell and pbc of ``atoms`` (no extension)."""
    return encode_request(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, properties)


def unpack_request(data: bytes) -> Tuple[Any, List[str]]:
    """0.1.3's ``unpack_request``: a fresh ``ase.Atoms`` and the property list."""
    from ase import Atoms

    r = decode_request(data)
    atoms = Atoms(numbers=r["numbers"], positions=r["positions"], cell=r["cell"], pbc=r["pbc"])
    if r["info"]:
        atoms.info.update(r["info"])
    return atoms, r["properties"]


def get_request_info(data: bytes) -> Dict[str, Any]:
    """0.1.3's ``get_request_info``: ``{"version", "n_atoms", "properties"}``."""
    msg = _unpack(data)
    if not isinstance(msg, list) or len(msg) < 6:
        raise ProtocolError("Invalid request: expected an array of at least 6 elements")
    return {"version": msg[0], "n_atoms": len(msg[1]) // 4, "properties": list(msg[5])}


def pack_response(results: Optional[Mapping[str, Any]] = None, error: Optional[str] = None) -> bytes:
    """0.1.3's ``pack_response``: arrays as flat float64 bin, numpy scalars as Python ones."""
    if error is not None:
        return _packb([PROTOCOL_VERSION, False, {}, error], use_bin_type=True)
    out: Dict[str, Any] = {}
    for k, v in (results or {}).items():
        if isinstance(v, np.ndarray):
            out[k] = np.ascontiguousarray(v, dtype="<f8").tobytes()
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return _packb([PROTOCOL_VERSION, True, out, None], use_bin_type=True)


def unpack_response(data: bytes, n_atoms: Optional[int] = None) -> Dict[str, Any]:
    """0.1.3's ``unpack_response``: the results, or :class:`RemoteError` (a RuntimeError)."""
    reply = decode_response(data, n_atoms)
    reply.raise_for_error()
    return reply.results
