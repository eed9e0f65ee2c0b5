"""What can be served and how to build it: aserpc's discovery, for the worker and the manager.

The Go binary embeds this file and runs it in the user's interpreter (through pyhost, next to the
helper ``aserpc_pyhost.py``); it needs only the standard library. It is the one place that knows:

* how to load code: ``file.py:VAR`` / ``dir/file:VAR`` (a file: the source ends with ``.py`` or
  contains ``/``) or ``pkg.mod:VAR`` (an importable module), ``VAR`` possibly dotted
  (:func:`load_object`, :func:`load_registry`);
* the two entry-point groups, ``aserpc.calculators`` (providers returning calculator metadata)
  and ``aserpc.spawn`` (providers returning spawn configs), on Python 3.9 and 3.10+
  (:func:`providers`);
* calculators: :func:`resolve` turns a worker's CALCULATOR argument into a factory,
  :func:`list_calculators` makes the rows of ``aserpc list``;
* spawn configs: :func:`discover_spawn` returns the manager's configs as plain JSON.

Rules, settled once for both groups (aserpc 0.1.3 had two copies that differed):

* A file is loaded as a module registered in ``sys.modules`` — registries as ``_registry``
  (0.1.3's name), other file targets under a name derived from the path — so dataclasses,
  pickling and multiprocessing children can find what it defines.
* A registry variable may be dotted and may be a callable returning the dict.
* A provider that fails to load or raises never hides the others: it becomes a warning.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "CALCULATORS_GROUP", "SPAWN_GROUP", "BUILTIN", "CalculatorNotFound", "load_object", "load_registry",
    "providers", "describe", "resolve", "list_calculators", "discover_calculators", "spawn_config",
    "discover_spawn",
]

CALCULATORS_GROUP = "aserpc.calculators"
SPAWN_GROUP = "aserpc.spawn"

# Built-in calculators, available wherever ase is importable; the aserpc Python package's own
# provider registers the same two names, so an installed aserpc changes nothing.
BUILTIN: Dict[str, Dict[str, Any]] = {
    "LJ": {"factory": "ase.calculators.lj:LennardJones"},
    "EMT": {"factory": "ase.calculators.emt:EMT"},
}


class CalculatorNotFound(LookupError):
    """A calculator name is neither in the registry nor among the entry points."""


# --------------------------------------------------------------------------- loading code


def is_file(src: str) -> bool:
    """Whether the source part of ``src:VAR`` names a file rather than a module."""
    return src.endswith(".py") or "/" in src


def _load_file(path: str, modname: str, what: str) -> Any:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return mod


def _load_source(src: str, modname: str, what: str) -> Any:
    if is_file(src):
        return _load_file(src, modname, what)
    return importlib.import_module(src)


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def load_object(target: str) -> Any:
    """Load ``module.path:attr`` or ``file.py:attr`` (``attr`` may be dotted)."""
    src, sep, attr = target.rpartition(":")
    if not sep or not src or not attr:
        raise ValueError(f"Invalid target '{target}': expected 'module:name'")
    name = "_aserpc_target_" + hashlib.sha256(os.path.abspath(src).encode()).hexdigest()[:12]
    return _getattr_path(_load_source(src, name, "Target"), attr)


def load_registry(path: str, spawn: bool = False) -> Dict[Any, Any]:
    """``file.py:VAR`` or ``pkg.mod:VAR``: a dict, or a callable returning one.

    The messages are aserpc 0.1.3's, which differ between the worker's registry
    (``spawn=False``) and the manager's.
    """
    src, sep, var = path.rpartition(":")
    if not sep or not src or not var:
        if spawn:
            raise ValueError(f"Invalid registry path '{path}': expected 'module:variable'")
        raise ValueError(f"Invalid registry path '{path}', expected 'path:variable'")
    what = "Spawn registry" if spawn else "Registry"
    reg = _getattr_path(_load_source(src, "_registry", what), var)
    if callable(reg) and not isinstance(reg, dict):
        reg = reg()
    if not isinstance(reg, dict):
        kind = "name -> SpawnConfig" if spawn else "name -> factory"
        raise TypeError(f"{what} '{path}' must be a dict of {kind}, got {type(reg).__name__}")
    return reg


def _entry_points(group: str) -> list:
    from importlib.metadata import entry_points

    eps = entry_points()
    if hasattr(eps, "select"):  # 3.10+
        return list(eps.select(group=group))
    return list(eps.get(group, []))  # 3.9: a dict without group=


def providers(group: str, warnings: List[Dict[str, str]]) -> List[Tuple[Any, Any]]:
    """(entry point, what its provider returned) for every provider of ``group`` that loads
    and returns something, in entry-point order (later ones override earlier names, as in
    aserpc 0.1.3). A provider that fails to load, is not callable or raises is reported in
    ``warnings`` as ``{"provider", "where", "message"}`` and skipped."""
    out = []
    for ep in _entry_points(group):
        where = f"entry point {ep.name} ({ep.value})"
        try:
            provider = ep.load()
            if not callable(provider):
                raise TypeError(f"{type(provider).__name__} object is not callable")
            out.append((ep, provider()))
        except Exception as e:  # a broken provider must not hide the others
            warnings.append({"provider": ep.name, "where": where, "message": f"{type(e).__name__}: {e}"})
    return out


def describe(obj: Any) -> str:
    """``module.qualname`` of a factory, never failing (functools.partial, instances, ...)."""
    if isinstance(obj, functools.partial):
        return f"functools.partial({describe(obj.func)})"
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if qual is None:
        t = type(obj)
        mod, qual = getattr(t, "__module__", None), t.__qualname__ + " instance"
    return f"{mod}.{qual}" if mod else str(qual)


# --------------------------------------------------------------------------- calculators


def discover_calculators(warnings: Optional[List[Dict[str, str]]] = None) -> Dict[str, Dict[str, Any]]:
    """Merged calculator metadata of the built-ins and every ``aserpc.calculators`` provider.

    Later providers win, as in aserpc 0.1.3; a provider returning something other than a dict
    is ignored.
    """
    merged: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in BUILTIN.items()}
    for _, result in providers(CALCULATORS_GROUP, warnings if warnings is not None else []):
        if isinstance(result, dict):
            merged.update(result)
    return merged


def _is_direct(spec: str) -> bool:
    head, sep, _ = spec.partition(":")
    return bool(sep) and "." in head


def _from_metadata(meta: Dict[str, Any], args: Sequence[Any] = (), kwargs: Optional[Dict[str, Any]] = None,
                   warnings: Optional[List[str]] = None) -> Tuple[Callable[[], Any], str]:
    """The factory of an entry point's metadata; ``args`` (when given) replace the metadata's
    and ``kwargs`` are merged over them (the worker's --args/--kwargs)."""
    if "factory_fn" in meta and callable(meta["factory_fn"]):
        fn = meta["factory_fn"]
        desc = describe(fn)
    else:
        desc = meta["factory"]  # KeyError 'factory', as the reference reports it
        fn = load_object(desc)
    a = list(args) if args else list(meta.get("args") or [])
    kw = dict(meta.get("kwargs") or {}, **(kwargs or {}))
    _check_kwargs(fn, kwargs or {}, warnings)
    if a or kw:
        return functools.partial(fn, *a, **kw), desc
    return fn, desc


def _check_kwargs(fn: Any, kwargs: Dict[str, Any], warnings: Optional[List[str]]) -> None:
    """Warn about keyword arguments an ASE calculator class does not declare (a misspelt
    ``sigmaa`` would otherwise land silently in its parameters): not in its ``__init__`` nor
    its base classes' signatures nor its ``default_parameters``. A warning, not an error:
    some calculators (file-based DFT codes) take keywords they do not declare."""
    if not kwargs or warnings is None or not isinstance(fn, type):
        return
    try:
        import inspect

        from ase.calculators.calculator import Calculator
    except Exception:
        return
    if not issubclass(fn, Calculator):
        return
    known = set(getattr(fn, "default_parameters", None) or {})
    for klass in fn.__mro__:
        init = klass.__dict__.get("__init__")
        try:
            params = inspect.signature(init).parameters.values() if init else ()
        except (TypeError, ValueError):
            continue
        known.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    known.discard("self")
    for k in kwargs:
        if k not in known:
            close = difflib.get_close_matches(k, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.append(f"{describe(fn)} declares no parameter {k!r}{hint} (passed on anyway; it knows "
                            f"{sorted(known)})")


def _source(name: str, meta: Any) -> str:
    return "builtin" if name in BUILTIN and meta == BUILTIN[name] else "entry point"


def resolve(spec: str, name: str = "", args: Sequence[Any] = (), kwargs: Optional[Dict[str, Any]] = None,
            registry: str = "") -> Dict[str, Any]:
    """Resolve a worker's CALCULATOR argument into a factory (aserpc 0.1.3 §7).

    Returns ``{"factory", "name", "description", "source", "warnings"}``; source is
    ``direct``, ``registry``, ``builtin`` or ``entry point``. An entry point's metadata may add
    ``"batch"``: a batch adapter (``"module:callable"`` or a callable taking the calculator),
    returned as ``"batch"`` (the worker's batch path, pyhost/aserpc_batch.py).
    """
    kwargs = kwargs or {}
    warnings: List[str] = []
    if _is_direct(spec):
        fn = load_object(spec)
        _check_kwargs(fn, kwargs, warnings)
        factory = functools.partial(fn, *args, **kwargs) if (args or kwargs) else fn
        return {"factory": factory, "name": name or spec.rpartition(":")[2],
                "description": describe(fn), "source": "direct", "warnings": warnings}
    # A name: --args/--kwargs apply too (0.1.3 ignored them), merged over an entry point's own.
    reg: Dict[Any, Any] = {}
    if registry:
        reg = load_registry(registry)
        if spec in reg:
            f = reg[spec]
            _check_kwargs(f, kwargs, warnings)
            return {"factory": functools.partial(f, *args, **kwargs) if (args or kwargs) else f,
                    "name": name or spec, "description": describe(f), "source": "registry", "warnings": warnings}
    meta = discover_calculators()
    if spec in meta:
        fn, desc = _from_metadata(meta[spec], args, kwargs, warnings)
        out = {"factory": fn, "name": name or spec, "description": desc, "source": _source(spec, meta[spec]),
               "warnings": warnings}
        if meta[spec].get("batch"):
            # A batch adapter ("module:callable" or a callable taking the calculator): see the
            # worker's batch path (pyhost/aserpc_batch.py).
            out["batch"] = meta[spec]["batch"]
        return out
    avail = sorted(set(map(str, reg)) | set(meta))
    raise CalculatorNotFound(f"Calculator '{spec}' not found. Available: {avail if avail else 'none'}")


def list_calculators(registry: str = "") -> List[Dict[str, str]]:
    """Rows for ``aserpc list``: name, factory, source, and warning rows for broken providers."""
    rows: List[Dict[str, str]] = []
    if registry:
        for k, f in load_registry(registry).items():
            rows.append({"name": str(k), "factory": describe(f), "source": "registry"})
        return sorted(rows, key=lambda r: r["name"])
    warnings: List[Dict[str, str]] = []
    for k, m in discover_calculators(warnings).items():
        if isinstance(m, dict) and "factory" in m:
            fac = str(m["factory"])
        elif isinstance(m, dict) and "factory_fn" in m:
            fac = describe(m["factory_fn"])
        else:
            fac = "?"
        rows.append({"name": str(k), "factory": fac, "source": _source(k, m)})
    rows.sort(key=lambda r: r["name"])
    for w in warnings:
        rows.append({"name": w["provider"], "factory": "", "source": "entry point", "warning": w["message"]})
    return rows


# --------------------------------------------------------------------------- spawn configs

#: Fields of SpawnConfig: aserpc 0.1.3's five, then ours.
SPAWN_FIELDS = ("name", "command", "env", "cwd", "idle_timeout",
                "max_workers", "min_workers", "gpus", "start_timeout", "cpus_per_worker")


def _fspath(key: str, field: str, v: Any) -> str:
    if isinstance(v, (str, os.PathLike)):
        return os.fspath(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    raise TypeError(f"spawn config '{key}': {field} items must be strings, got {type(v).__name__}")


def _number(key: str, field: str, v: Any, cast: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool):
        raise TypeError(f"spawn config '{key}': {field} must be a number, got bool")
    try:
        return cast(v)
    except (TypeError, ValueError):
        raise TypeError(f"spawn config '{key}': {field} must be a number, got {v!r}") from None


def spawn_config(key: str, value: Any) -> Dict[str, Any]:
    """One spawn config as a JSON-able dict, from a SpawnConfig-like object (0.1.3's, ours, or
    anything with the same attributes, read duck-typed) or a plain dict."""
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in SPAWN_FIELDS)
        if unknown:
            raise TypeError(f"spawn config '{key}': unknown field(s) {', '.join(unknown)} "
                            f"(known: {', '.join(SPAWN_FIELDS)})")
        d = dict(value)
    elif hasattr(value, "command"):
        d = {f: getattr(value, f) for f in SPAWN_FIELDS if hasattr(value, f)}
    else:
        raise TypeError(f"spawn config '{key}' must be a SpawnConfig or a dict, got {type(value).__name__}")

    cmd = d.get("command")
    if isinstance(cmd, (str, bytes)) or not isinstance(cmd, (list, tuple)) or not cmd:
        raise TypeError(f"spawn config '{key}': command must be a non-empty list of strings "
                        f"(argv, no shell), got {cmd!r}")
    out: Dict[str, Any] = {
        "key": str(key),
        "name": str(d.get("name") or key),
        "command": [_fspath(key, "command", a) for a in cmd],
    }
    env = d.get("env")
    if env is not None:
        if not isinstance(env, dict):
            raise TypeError(f"spawn config '{key}': env must be a dict of str -> str, got {type(env).__name__}")
        out["env"] = {str(k): _fspath(key, "env", v) for k, v in env.items()}
    if d.get("cwd") is not None:
        out["cwd"] = _fspath(key, "cwd", d["cwd"])
    for f, cast in (("idle_timeout", float), ("start_timeout", float),
                    ("max_workers", int), ("min_workers", int), ("cpus_per_worker", int)):
        v = _number(key, f, d.get(f), cast)
        if v is not None:
            out[f] = v
    gpus = d.get("gpus")
    if gpus is not None:
        if isinstance(gpus, (str, int)):
            gpus = [gpus]
        out["gpus"] = [_fspath(key, "gpus", g) for g in gpus]
    return out


def discover_spawn(registry: Optional[str] = None) -> Dict[str, Any]:
    """The manager's configs, from ``registry`` if given, else from every ``aserpc.spawn``
    provider, as ``{"configs", "sources", "warnings", "python"}`` (plain JSON). A registry's
    invalid config is an error; an entry point's is a warning, and the config is skipped."""
    cwd = os.getcwd()
    if cwd not in sys.path:  # `--registry myconfigs:CONFIGS` from the project directory
        sys.path.append(cwd)
    warnings: List[str] = []
    configs: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    if registry:
        for k, v in load_registry(registry, spawn=True).items():
            configs[str(k)] = spawn_config(str(k), v)
            sources[str(k)] = f"registry {registry}"
    else:
        failed: List[Dict[str, str]] = []
        for ep, result in providers(SPAWN_GROUP, failed):
            where = f"entry point {ep.name} ({ep.value})"
            if not isinstance(result, dict):
                warnings.append(f"{where} returned {type(result).__name__}, not a dict; skipped")
                continue
            for k, v in result.items():
                try:
                    configs[str(k)] = spawn_config(str(k), v)
                    sources[str(k)] = where
                except TypeError as e:
                    warnings.append(f"{where}: {e}; skipped")
        warnings = [f"{w['where']} failed: {w['message']}" for w in failed] + warnings
    return {"configs": configs, "sources": sources, "warnings": warnings, "python": sys.executable}
