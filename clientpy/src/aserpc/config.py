"""Configuration, resolved as aserpc's Go side resolves it (``config/config.go``).

Per key, the environment variable ``ASERPC_<KEY>`` wins over the ``[tool.aserpc]`` table of
the nearest ``pyproject.toml`` (the working directory upwards), which wins over the default.
Unlike aserpc 0.1.3 it is resolved **when used**, not at import: importing aserpc never
fails, and a bad value raises :class:`~aserpc.errors.ConfigError` naming the key and
where it came from when a default is actually needed.

================================  =================================  ==========================
key                               env var                            default
================================  =================================  ==========================
``ipc_dir``                       ``ASERPC_IPC_DIR``                 ``<project root>/.aserpc``
``ipc_frontend``                  ``ASERPC_IPC_FRONTEND``            ``ipc://{ipc_dir}/frontend.ipc``
``ipc_backend``                   ``ASERPC_IPC_BACKEND``             ``ipc://{ipc_dir}/backend.ipc``
``worker_timeout``                ``ASERPC_WORKER_TIMEOUT``          30.0 s
``heartbeat_interval``            ``ASERPC_HEARTBEAT_INTERVAL``      5.0 s
``idle_timeout``                  ``ASERPC_IDLE_TIMEOUT``            0 (a worker never exits idle)
``request_queue_timeout``         ``ASERPC_REQUEST_QUEUE_TIMEOUT``   60.0 s
``client_timeout_ms``             ``ASERPC_CLIENT_TIMEOUT_MS``       60000 (an integer)
``max_message_size``              ``ASERPC_MAX_MESSAGE_SIZE``        268435456 bytes (256 MiB)
``client_spin_us``                ``ASERPC_CLIENT_SPIN_US``          1000 (µs a session's client polls for its reply; 0 = never)
``curve_server_key``              ``ASERPC_CURVE_SERVER_KEY``        unset (the broker's CURVE public key: Z85 or a ``.key`` file)
``curve_secret``                  ``ASERPC_CURVE_SECRET``            unset (this client's ``.key_secret`` file)
================================  =================================  ==========================

The two ``curve_*`` keys matter only for ``tcp://`` brokers (see :mod:`aserpc.curve`); a
relative file name is resolved like ``ipc_dir``.

The project root is the directory of the nearest ``pyproject.toml`` (else the working
directory). A relative ``ipc_dir`` is relative to the pyproject.toml that set it, or to the
working directory when it comes from the environment. Numbers must be positive; the
integer key rejects ``60000.0``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ._z85 import is_z85_key
from .errors import ConfigError

__all__ = ["Config", "KEYS", "load_config"]

KEYS = (
    "ipc_dir", "ipc_frontend", "ipc_backend", "worker_timeout",
    "heartbeat_interval", "idle_timeout", "request_queue_timeout", "client_timeout_ms",
    "max_message_size",  # ours: the largest frame a broker accepts (a bigger one is refused here)
    "client_spin_us",  # ours: how long a session's client busy-polls for its worker's reply
    "curve_server_key", "curve_secret",
)

_DEFAULTS = {
    "worker_timeout": 30.0,
    "heartbeat_interval": 5.0,
    "idle_timeout": 0.0,
    "request_queue_timeout": 60.0,
    "client_timeout_ms": 60000,
    "max_message_size": 256 << 20,
    "client_spin_us": 1000,
}


@dataclass(frozen=True)
class Config:
    """The resolved configuration; ``sources`` says where each value came from."""

    ipc_dir: str
    ipc_frontend: str
    ipc_backend: str
    worker_timeout: float
    heartbeat_interval: float
    idle_timeout: float
    request_queue_timeout: float
    client_timeout_ms: int
    max_message_size: int = 256 << 20
    client_spin_us: int = 1000
    project: Optional[str] = None
    sources: Dict[str, str] = field(default_factory=dict)
    curve_server_key: Optional[str] = None
    curve_secret: Optional[str] = None


def load_config(cwd: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> Config:
    """Resolve the configuration for directory ``cwd`` and environment ``environ``.

    Parameters
    ----------
    cwd:
        Where to start looking for ``pyproject.toml`` (default: the working directory).
    environ:
        The environment (default: ``os.environ``), read now, not at import.

    Raises
    ------
    ConfigError
        A value is not of the key's type, not positive, or the pyproject.toml is invalid.
    """
    env = os.environ if environ is None else environ
    d = os.path.abspath(cwd or os.getcwd())
    table, project = _find_project(d)
    root = os.path.dirname(project) if project else d
    sources: Dict[str, str] = {}

    def raw(key: str) -> Tuple[Any, str, str, bool]:
        name = "ASERPC_" + key.upper()
        if name in env:
            return env[name], "env", name, True
        if key in table:
            return table[key], "pyproject", project or "", True
        return None, "default", "", False

    def bad(key: str, src: str, where: str, v: Any, want: str) -> ConfigError:
        return ConfigError(f"config {key} = {v!r} (from {src} {where}): {want}")

    def string(key: str, default: Callable[[], str]) -> str:
        v, src, where, ok = raw(key)
        if not ok:
            sources[key] = "default"
            return default()
        if not isinstance(v, str) or v == "":
            raise bad(key, src, where, v, "want a non-empty string")
        sources[key] = f"{src} {where}"
        return v

    def number(key: str, integer: bool, zero_ok: bool = False) -> float:
        v, src, where, ok = raw(key)
        if not ok:
            sources[key] = "default"
            return _DEFAULTS[key]
        if isinstance(v, str):
            s = v.strip()
            try:
                if integer:
                    if not re.fullmatch(r"[+-]?\d+", s):
                        raise ValueError(s)
                    f: float = int(s)
                else:
                    f = float(s)
            except ValueError:
                raise bad(key, src, where, v, "want an integer" if integer else "want a number") from None
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad(key, src, where, v, "want a number")
        elif integer and isinstance(v, float):
            if v != int(v):
                raise bad(key, src, where, v, "want an integer")
            f = int(v)
        else:
            f = v
        if not (f > 0 or (zero_ok and f == 0)):  # also rejects NaN
            raise bad(key, src, where, v, "want zero or a positive value" if zero_ok else "want a positive value")
        sources[key] = f"{src} {where}"
        return int(f) if integer else float(f)

    ipc_dir = string("ipc_dir", lambda: os.path.join(root, ".aserpc"))
    if not os.path.isabs(ipc_dir):
        base = root if sources["ipc_dir"].startswith("pyproject") else d
        ipc_dir = os.path.normpath(os.path.join(base, ipc_dir))
    frontend = string("ipc_frontend", lambda: "ipc://" + ipc_dir + "/frontend.ipc")
    backend = string("ipc_backend", lambda: "ipc://" + ipc_dir + "/backend.ipc")
    for k in ("ipc_frontend", "ipc_backend"):
        if sources[k] == "default":
            sources[k] = "derived from ipc_dir"

    def path(key: str) -> Optional[str]:
        v = string(key, lambda: "")
        if not v:
            return None
        if key == "curve_server_key" and is_z85_key(v):
            return v
        if os.path.isabs(v):
            return v
        base = root if sources[key].startswith("pyproject") else d
        return os.path.normpath(os.path.join(base, v))

    curve_server_key = path("curve_server_key")
    curve_secret = path("curve_secret")
    return Config(
        ipc_dir=ipc_dir,
        ipc_frontend=frontend,
        ipc_backend=backend,
        worker_timeout=number("worker_timeout", False),
        heartbeat_interval=number("heartbeat_interval", False),
        idle_timeout=number("idle_timeout", False, zero_ok=True),
        request_queue_timeout=number("request_queue_timeout", False),
        client_timeout_ms=int(number("client_timeout_ms", True)),
        max_message_size=int(number("max_message_size", True)),
        client_spin_us=int(number("client_spin_us", True, zero_ok=True)),
        project=project,
        sources=sources,
        curve_server_key=curve_server_key,
        curve_secret=curve_secret,
    )


def _find_project(d: str) -> Tuple[Dict[str, Any], Optional[str]]:
    """The ``[tool.aserpc]`` table of the nearest pyproject.toml and its path.

    As the reference, the first file found counts even without the table; unlike it, an
    unreadable or invalid file is an error (a typo must not move the broker elsewhere).
    """
    while True:
        p = os.path.join(d, "pyproject.toml")
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            parent = os.path.dirname(d)
            if parent == d:
                return {}, None
            d = parent
            continue
        except OSError as e:
            raise ConfigError(f"config: {e}") from None
        try:
            doc = _parse_toml(data.decode("utf-8"))
        except Exception as e:  # any parser's error
            raise ConfigError(f"config: {p}: {e}") from None
        table = doc.get("tool", {}).get("aserpc", {})
        if not isinstance(table, dict):
            raise ConfigError(f"config: {p}: [tool.aserpc] is not a table")
        return table, p


def _parse_toml(text: str) -> Dict[str, Any]:
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            return _mini_toml(text)
    return tomllib.loads(text)


_KV = re.compile(r"""^\s*([A-Za-z0-9_-]+|"[^"]*")\s*=\s*(.*?)\s*$""")


def _mini_toml(text: str) -> Dict[str, Any]:
    """Just enough TOML for ``[tool.aserpc]`` on Python < 3.11 without tomli.

    Reads the key = value lines of that one table: basic and literal strings, integers,
    floats and booleans. Other tables are skipped unread.
    """
    out: Dict[str, Any] = {}
    in_table = False
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            name = s.split("#", 1)[0].strip()
            in_table = name.replace(" ", "") in ("[tool.aserpc]",)
            continue
        if not in_table:
            continue
        m = _KV.match(line)
        if not m:
            raise ValueError(f"line {lineno}: cannot parse {s!r}")
        key = m.group(1).strip('"')
        out[key] = _mini_value(m.group(2), lineno)
    return {"tool": {"aserpc": out}} if out or in_table else {}


def _mini_value(v: str, lineno: int) -> Any:
    if v[:1] in ('"', "'"):
        q = v[0]
        end = v.find(q, 1)
        if end < 0:
            raise ValueError(f"line {lineno}: unterminated string")
        rest = v[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f"line {lineno}: junk after string")
        s = v[1:end]
        if q == '"':
            s = s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        return s
    v = v.split("#", 1)[0].strip()
    if v in ("true", "false"):
        return v == "true"
    w = v.replace("_", "")
    try:
        return int(w)
    except ValueError:
        pass
    try:
        return float(w)
    except ValueError:
        raise ValueError(f"line {lineno}: unsupported value {v!r}") from None
