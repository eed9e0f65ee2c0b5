"""aserpc: ASE calculators served over ZeroMQ — the Python client.

A drop-in for aserpc 0.1.3's client: ``RemoteCalculator``, ``list_calculators``,
``broker_status``, ``shutdown_workers`` and ``SpawnConfig`` keep their signatures and
meaning. The broker, worker and manager are the ``aserpc`` command (written in Go).

>>> from aserpc import RemoteCalculator                      # doctest: +SKIP
>>> water.calc = RemoteCalculator("LJ")                      # doctest: +SKIP
>>> water.get_potential_energy()                             # doctest: +SKIP
"""

from __future__ import annotations

from .batch import calculate_many
from .client import (RemoteCalculator, broker_status, list_calculators, shutdown_broker,
                     shutdown_workers)
from .config import Config, load_config
from .curve import CurveKeys
from .errors import (AserpcError, BrokerError, BrokerUnreachableError, ConfigError, InvalidInputError,
                     NoWorkersError, ProtocolError, RemoteError, RequestTimeoutError, WorkerLostError)
from .spawn import SpawnConfig

__version__ = "0.2.0"
__version_tuple__ = (0, 2, 0, "dev0")

__all__ = [
    "RemoteCalculator",
    "calculate_many",
    "list_calculators",
    "broker_status",
    "shutdown_workers",
    "shutdown_broker",
    "SpawnConfig",
    "Config",
    "load_config",
    "CurveKeys",
    "AserpcError",
    "RemoteError",
    "BrokerError",
    "NoWorkersError",
    "WorkerLostError",
    "BrokerUnreachableError",
    "RequestTimeoutError",
    "ProtocolError",
    "InvalidInputError",
    "ConfigError",
    "__version__",
]
