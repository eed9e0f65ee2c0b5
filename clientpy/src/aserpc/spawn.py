"""SpawnConfig: how a manager starts a worker for a calculator (aserpc 0.1.3's ``aserpc.spawn``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

from .config import load_config

__all__ = ["SpawnConfig"]

_PLACEHOLDER = re.compile(r"\{(name|broker|idle_timeout)\}")


def _default_idle_timeout() -> float:
    try:
        return load_config().idle_timeout
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
