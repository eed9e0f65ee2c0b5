"""aserpc 0.1.3's ``aserpc.constants``: message codes and configuration values.

The codes are plain constants. The configuration names (``IPC_FRONTEND``,
``CLIENT_TIMEOUT_MS``, ...) are resolved **when read** (PEP 562 module ``__getattr__``),
from the environment, ``pyproject.toml`` and the defaults as :mod:`aserpc.config` says, so
``import aserpc`` never fails on a bad environment value and ``from aserpc.constants import
IPC_FRONTEND`` still works.
"""

from __future__ import annotations

from typing import Any, Dict

from .config import load_config

PROTOCOL_VERSION = 1

READY = b"\x01"
HEARTBEAT = b"\x02"  # 0.1.0–0.1.2 workers
BUSY = b"\x03"
REQUEST = b"\x04"
RESPONSE = b"\x05"
LIST = b"\x06"
STATUS = b"\x07"
SHUTDOWN = b"\x08"
WORKER_SHUTDOWN = b"\x09"
ERROR = b"\x0a"
DISCONNECT = b"\x0b"
SPAWN_REQUEST = b"\x0c"
SPAWN_RESPONSE = b"\x0d"
MANAGER_READY = b"\x0e"
MANAGER_HEARTBEAT = b"\x0f"  # 0.1.2 managers
WORKER_JOINED = b"\x10"  # aserpc's broker → aserpc's manager
PROGRESS = b"\x11"  # proposed: broker → DEALER client with a correlation frame (see aserpc.client)
CANCEL = b"\x12"  # aserpc's: client → broker, forget a request
WORKER_EXITED = b"\x13"  # aserpc's manager → aserpc's broker
SESSION_END = b"\x14"  # aserpc's: client → broker, release the session's worker (no reply)

MESSAGE_NAMES: Dict[bytes, str] = {
    v: k for k, v in dict(globals()).items() if isinstance(v, bytes) and len(v) == 1 and k.isupper()
}

_CONFIG_NAMES = {
    "IPC_DIR": "ipc_dir",
    "IPC_FRONTEND": "ipc_frontend",
    "IPC_BACKEND": "ipc_backend",
    "WORKER_TIMEOUT": "worker_timeout",
    "HEARTBEAT_INTERVAL": "heartbeat_interval",
    "IDLE_TIMEOUT": "idle_timeout",
    "REQUEST_QUEUE_TIMEOUT": "request_queue_timeout",
    "CLIENT_TIMEOUT_MS": "client_timeout_ms",
}


def __getattr__(name: str) -> Any:
    key = _CONFIG_NAMES.get(name)
    if key is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(load_config(), key)


def __dir__() -> list:
    return sorted(list(globals()) + list(_CONFIG_NAMES))
