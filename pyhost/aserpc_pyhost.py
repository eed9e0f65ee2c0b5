"""Python side of aserpc's pyhost: the host protocol the Go worker speaks with the user's
interpreter — operations, objects kept for the host, host memory, errors, the subprocess loop.

Its siblings do the rest: ``aserpc_compute.py`` builds ``ase.Atoms``, computes and encodes the
results, with ``aserpc_state.py`` (ASE's check_state, fast) and ``aserpc_results.py`` (ASE's
conventions for results), both shared with the client package; ``aserpc_registry.py`` (the Go
package registry's) finds what can be served and builds it. All need only the standard library
at import time and ``ase`` + ``numpy`` for the calculator operations. They are embedded in the Go binary, written to a cache directory and
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
import os
import sys
import threading
import time
import traceback
from typing import Any, Dict, List, Sequence, Tuple

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


_sibling("aserpc_state")
_sibling("aserpc_results")
# Building ase.Atoms, computing, and the results' checks and encoding (needs the two above).
_compute = _sibling("aserpc_compute")
# Several structures in one model call (needs aserpc_compute).
_batch = _sibling("aserpc_batch")


def _registry() -> Any:
    """aserpc_registry: what can be served and how to build it (the Go package registry's
    Python half), imported when first needed."""
    return _sibling("aserpc_registry")


__all__ = ["handle", "serve"]

# Timestamps of the compute path for `just bench-client` (see internal/trace): off unless
# ASERPC_TRACE names a file prefix; the points continue the Go side's numbering.
_TRACE = os.environ.get("ASERPC_TRACE") or ""
_marks: List[Tuple[int, int]] = []
_T_START, _T_ATOMS, _T_COMPUTED, _T_END = 31, 32, 34, 35  # 33: aserpc_compute.T_CHECKED


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
    adapter = r.pop("batch", None)
    if adapter is not None:
        _adapters[fid] = _registry().load_object(adapter) if isinstance(adapter, str) else adapter
    return dict(r, id=fid), []


# Batch adapters an entry point named ("batch" in its metadata), by factory id, then by the
# id of each calculator made from that factory.
_adapters: Dict[int, Any] = {}


def _signal_handlers() -> Dict[str, Any]:
    import signal

    return {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM")}


def _op_create(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    before = _signal_handlers()
    calc = _get(meta["factory"])()
    adapter = _adapters.get(int(meta["factory"]))
    warnings = [f"the calculator factory installed a {name} handler; the host owns {name} and may not "
                f"see it any more" for name, h in _signal_handlers().items() if h is not before[name]]
    cid = _keep(calc)
    if adapter is not None:
        _adapters[cid] = adapter
    return dict(_compute.calculator_info(calc), id=cid, warnings=warnings,
                **{"class": _registry().describe(type(calc))}), []


def _op_compute(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    if _TRACE:
        _mark(_T_START)
    cid = int(meta["calc"])
    calc = _get(cid)
    n = int(meta["n"])
    specs = meta.get("arrays")
    atoms = None if specs else _compute.reuse_raw(cid, calc, bytes(bufs[0]), bufs[1], bytes(bufs[2]),
                                                  bytes(bufs[3]), meta.get("info"))
    if atoms is None:
        numbers = _array(bufs[0], "<i4", (n,))
        positions = _array(bufs[1], "<f8", (n, 3))
        cell = _array(bufs[2], "<f8", (3, 3))
        pbc = _array(bufs[3], "|b1", (3,))
        extra = {a["name"]: _array(bufs[a["index"]], a["dtype"], a["shape"]) for a in specs or ()}
        atoms = _compute.atoms_for(cid, calc, numbers, positions, cell, pbc, meta.get("info"), extra)
    if _TRACE:
        _mark(_T_ATOMS)
    results = _compute.compute(calc, atoms, meta.get("properties"), _mark if _TRACE else None)
    if _TRACE:
        _mark(_T_COMPUTED)
    values, arrays, order, dropped = _compute.encode_results(calc, results, n, bool(meta.get("all")))
    if _TRACE:
        _mark(_T_END)
    out: Dict[str, Any] = {"values": values, "order": order}
    if dropped:
        out["dropped"] = dropped
    return out, arrays


_batch_paths: Dict[int, Any] = {}  # calculator id → its batch path (aserpc_batch.batch_path), once


def _path(cid: int) -> Any:
    if cid not in _batch_paths:
        _batch_paths[cid] = _batch.batch_path(_get(cid), _adapters.get(cid))
    return _batch_paths[cid]


def _op_batch_path(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    path = _path(int(meta["calc"]))
    return {"where": path[2] if path is not None else ""}, []


def _op_compute_batch(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    """Several requests at once (``meta["items"]``, each laid out as a compute's meta with
    its buffers from ``base``): one model call per batch key where the calculator batches,
    else one by one. Each item answers as a compute does, or with its own error."""
    cid = int(meta["calc"])
    calc = _get(cid)
    path = None if meta.get("single") else _path(cid)
    items, built, out_items = [], [], [None] * len(meta["items"])
    for k, it in enumerate(meta["items"]):
        try:
            b, n = int(it["base"]), int(it["n"])
            atoms = _compute.make_atoms(
                _array(bufs[b], "<i4", (n,)), _array(bufs[b + 1], "<f8", (n, 3)), _array(bufs[b + 2], "<f8", (3, 3)),
                _array(bufs[b + 3], "|b1", (3,)), it.get("info"),
                {a["name"]: _array(bufs[a["index"]], a["dtype"], a["shape"]) for a in it.get("arrays", ())})
        except BaseException as e:
            out_items[k] = {"error": error_info(e)}
            continue
        items.append((atoms, it.get("properties")))
        built.append(k)
    results, figures = _batch.compute_batch(calc, path, items)
    arrays: list = []
    for k, r in zip(built, results):
        it = meta["items"][k]
        if isinstance(r, BaseException):
            out_items[k] = {"error": error_info(r)}
            continue
        try:
            start = len(arrays)
            values, _, order, dropped = _compute.encode_results(calc, r[0], int(it["n"]), bool(it.get("all")),
                                                                r[1], arrays)
        except BaseException as e:
            del arrays[start:]
            out_items[k] = {"error": error_info(e)}
            continue
        item: Dict[str, Any] = {"values": values, "order": order}
        if dropped:
            item["dropped"] = dropped
        out_items[k] = item
    figures["batched"] = path is not None
    return {"items": out_items, "figures": figures}, arrays


def _op_gpu_memory(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    """GPU memory torch has allocated here, in bytes (-1: torch not imported, or not on CUDA):
    the worker reports it for the broker's metrics. Never imports torch itself."""
    torch = sys.modules.get("torch")
    n = -1
    try:
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            n = sum(int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count()))
    except Exception:
        n = -1
    return {"bytes": n}, []


def _op_set_threads(meta: Dict[str, Any], bufs: Sequence[Any]) -> Tuple[Dict[str, Any], list]:
    """torch.set_num_threads(n) when torch is imported (the worker's thread budget)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(meta["n"]))
    return {"torch": torch is not None}, []


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
    _adapters.pop(int(meta["id"]), None)
    _batch_paths.pop(int(meta["id"]), None)
    _compute.forget(int(meta["id"]))
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
    "compute_batch": _op_compute_batch,
    "batch_path": _op_batch_path,
    "gpu_memory": _op_gpu_memory,
    "set_threads": _op_set_threads,
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
        # "ok" first: the host recognises success by its first bytes (one JSON decode fewer).
        return _encode({"ok": True, **out}).encode(), arrays
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
