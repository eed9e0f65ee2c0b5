"""Spawn-config discovery for ``aserpc manager``.

The Go manager runs this file in the Python of its environment (through
pyhost) and calls :func:`discover`. It returns plain JSON: the manager
never sees a Python object. Works on CPython 3.9+ and needs nothing but the
standard library: a ``SpawnConfig`` from aserpc 0.1.3, from our Python
package or any object with the same attributes is read duck-typed, and a
plain dict is accepted too.
"""

import importlib
import importlib.util
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

GROUP = "aserpc.spawn"

#: Fields of SpawnConfig: aserpc 0.1.3's five, then ours.
FIELDS = ("name", "command", "env", "cwd", "idle_timeout",
          "max_workers", "min_workers", "gpus", "start_timeout")


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


def plain(key: str, value: Any) -> Dict[str, Any]:
    """One spawn config as a JSON-able dict, from a SpawnConfig-like object or a dict."""
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in value if k not in FIELDS)
        if unknown:
            raise TypeError(f"spawn config '{key}': unknown field(s) {', '.join(unknown)} "
                            f"(known: {', '.join(FIELDS)})")
        d = dict(value)
    elif hasattr(value, "command"):
        d = {f: getattr(value, f) for f in FIELDS if hasattr(value, f)}
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
                    ("max_workers", int), ("min_workers", int)):
        v = _number(key, f, d.get(f), cast)
        if v is not None:
            out[f] = v
    gpus = d.get("gpus")
    if gpus is not None:
        if isinstance(gpus, (str, int)):
            gpus = [gpus]
        out["gpus"] = [_fspath(key, "gpus", g) for g in gpus]
    return out


def _load_source(src: str) -> Any:
    if src.endswith(".py") or "/" in src:
        path = os.path.abspath(os.path.expanduser(src))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Spawn registry file not found: {path}")
        spec = importlib.util.spec_from_file_location("_aserpc_spawn_registry", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses and pickling look modules up here
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(src)


def load_registry(path: str) -> Dict[str, Any]:
    """``module.path:ATTR`` or ``file.py:ATTR``: a dict, or a callable returning one."""
    src, sep, attr = path.rpartition(":")
    if not sep or not src or not attr:
        raise ValueError(f"Invalid registry path '{path}': expected 'module:variable'")
    obj = _load_source(src)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, dict):
        obj = obj()
    if not isinstance(obj, dict):
        raise TypeError(f"Spawn registry '{path}' must be a dict of name -> SpawnConfig, got {type(obj).__name__}")
    return {str(k): plain(str(k), v) for k, v in obj.items()}


def _entry_points() -> list:
    from importlib.metadata import entry_points

    eps = entry_points()
    if hasattr(eps, "select"):  # 3.10+
        return list(eps.select(group=GROUP))
    return list(eps.get(GROUP, []))


def from_entry_points(warnings: List[str]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Every ``aserpc.spawn`` provider, called; later ones override earlier names (as 0.1.3)."""
    configs: Dict[str, Any] = {}
    sources: Dict[str, str] = {}
    for ep in _entry_points():
        where = f"entry point {ep.name} ({ep.value})"
        try:
            result = ep.load()()
        except Exception as e:  # a broken provider must not hide the others
            warnings.append(f"{where} failed: {type(e).__name__}: {e}")
            continue
        if not isinstance(result, dict):
            warnings.append(f"{where} returned {type(result).__name__}, not a dict; skipped")
            continue
        for k, v in result.items():
            try:
                configs[str(k)] = plain(str(k), v)
                sources[str(k)] = where
            except TypeError as e:
                warnings.append(f"{where}: {e}; skipped")
    return configs, sources


def discover(registry: Optional[str] = None) -> Dict[str, Any]:
    """The manager's configs: from ``registry`` if given, else from the entry points."""
    cwd = os.getcwd()
    if cwd not in sys.path:  # `--registry myconfigs:CONFIGS` from the project directory
        sys.path.append(cwd)
    warnings: List[str] = []
    if registry:
        configs = load_registry(registry)
        sources = {k: f"registry {registry}" for k in configs}
    else:
        configs, sources = from_entry_points(warnings)
    return {"configs": configs, "sources": sources, "warnings": warnings,
            "python": sys.executable}
