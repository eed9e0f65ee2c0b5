"""SpawnConfig: how a manager starts a worker for a calculator (aserpc 0.1.3's ``aserpc.spawn``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from .config import load_config

__all__ = ["SpawnConfig", "load_spawn_registry", "discover_spawn_configs", "get_spawn_configs"]

_PLACEHOLDER = re.compile(r"\{(name|broker|idle_timeout)\}")


def _default_idle_timeout() -> float:
    """``idle_timeout`` of the configuration when set, else 0.1.3's 300 s: a spawned worker
    always idles out (the configuration's default, 0, is a hand-started worker's)."""
    try:
        return load_config().idle_timeout or 300.0
    except Exception:  # a bad environment value must not break constructing a config
        return 300.0


@dataclass
class SpawnConfig:
    """A worker command for ``aserpc manager`` (fields and defaults as 0.1.3).

    Parameters
    ----------
    name:
        Calculator name; substituted for ``{name}``.
    command:
        argv of the worker process (no shell), e.g.
        ``["aserpc", "worker", "mace.calculators:mace_mp", "--name", "{name}", "--broker", "{broker}",
        "--idle-timeout", "{idle_timeout}", "--kwargs", '{"model": "medium"}']``.
    env:
        Extra environment variables, merged over the manager's (None: inherit).
    cwd:
        Working directory (None: the manager's).
    idle_timeout:
        Only the value of ``{idle_timeout}`` (rendered as ``str(float)``, e.g. ``"300.0"``).
    """

    name: str
    command: List[str]
    env: Optional[Dict[str, str]] = None
    cwd: Optional[str] = None
    idle_timeout: float = 300.0

    def render_command(self, broker: Optional[str] = None) -> List[str]:
        """argv with ``{name}``, ``{broker}`` and ``{idle_timeout}`` substituted.

        Every other brace is left alone, so JSON such as ``'{"model": "medium"}'`` passes
        through (0.1.3's ``str.format`` raised KeyError on it and killed the manager).
        An argument that ``str.format`` can render with just these three names is rendered
        that way, so 0.1.3 templates with doubled braces (``'{{"model": "medium"}}'``) keep
        their meaning.
        """
        values = {
            "name": self.name,
            "broker": broker if broker is not None else load_config().ipc_backend,
            "idle_timeout": str(float(self.idle_timeout)),
        }
        out = []
        for arg in self.command:
            arg = str(arg)
            if "{" not in arg and "}" not in arg:
                out.append(arg)
                continue
            try:
                out.append(arg.format(**values))
            except (KeyError, IndexError, ValueError, AttributeError):
                out.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg))
        return out


SPAWN_ENTRY_POINT_GROUP = "aserpc.spawn"


def _to_config(name: str, value: object) -> SpawnConfig:
    if isinstance(value, SpawnConfig):
        return value
    if isinstance(value, dict):
        return SpawnConfig(name=name, **value)
    raise TypeError(f"spawn config {name!r} must be a SpawnConfig or a dict, not {type(value).__name__}")


def load_spawn_registry(path: str) -> Dict[str, SpawnConfig]:
    """``module.path:VAR`` → ``{name: SpawnConfig}`` (VAR a dict, or a callable returning one;
    values SpawnConfig or dicts of its fields), as 0.1.3."""
    import importlib

    if ":" not in path:
        raise ValueError(f"Invalid registry path '{path}': expected 'module:variable'")
    module, var = path.rsplit(":", 1)
    obj = getattr(importlib.import_module(module), var)
    if callable(obj):
        obj = obj()
    if not isinstance(obj, dict):
        raise TypeError(f"registry {path} must be a dict, not {type(obj).__name__}")
    return {str(k): _to_config(str(k), v) for k, v in obj.items()}


def discover_spawn_configs() -> Dict[str, SpawnConfig]:
    """Every entry point of group ``aserpc.spawn`` called and merged (later names win); entry
    points that fail or return something else are skipped with a warning."""
    import logging
    from importlib.metadata import entry_points

    log = logging.getLogger("aserpc.spawn")
    eps = entry_points()
    selected = eps.select(group=SPAWN_ENTRY_POINT_GROUP) if hasattr(eps, "select") \
        else eps.get(SPAWN_ENTRY_POINT_GROUP, [])  # Python 3.9: a dict
    out: Dict[str, SpawnConfig] = {}
    for ep in selected:
        try:
            result = ep.load()()
        except Exception as e:
            log.warning("spawn entry point %s failed: %s", ep.name, e)
            continue
        if not isinstance(result, dict):
            log.warning("spawn entry point %s returned %s, not a dict", ep.name, type(result).__name__)
            continue
        for k, v in result.items():
            if isinstance(v, SpawnConfig):
                out[str(k)] = v
            else:
                log.warning("spawn entry point %s: %r is not a SpawnConfig", ep.name, k)
    return out


def get_spawn_configs(registry_path: Optional[str] = None) -> Dict[str, SpawnConfig]:
    """The registry's configs when ``registry_path`` is given, else the entry points'."""
    return load_spawn_registry(registry_path) if registry_path else discover_spawn_configs()
