"""Exceptions raised by the aserpc client, all under :class:`AserpcError`.

They subclass what aserpc 0.1.3 raised, so scripts written for it keep working:
``except RuntimeError`` still catches remote and broker errors,
``except ConnectionError`` an unreachable broker and ``except TimeoutError`` a timeout.
Messages keep the reference's wording ("No workers available for calculator 'x'",
"Broker not reachable at ...", "Receive timeout (...ms)").

Each exception says whether retrying can help (:attr:`AserpcError.retryable`):
transport failures, lost workers, a broker restart and a momentarily empty
calculator can; a calculator's own error cannot.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "AserpcError",
    "RemoteError",
    "RemotePropertyNotImplementedError",
    "BrokerError",
    "NoWorkersError",
    "WorkerLostError",
    "BrokerUnreachableError",
    "RequestTimeoutError",
    "ProtocolError",
    "InvalidInputError",
    "ConfigError",
]


class AserpcError(RuntimeError):
    """Base class of every aserpc client error (a ``RuntimeError``, as 0.1.3 raised)."""

    #: Whether sending the same request again may succeed.
    retryable: bool = False


class RemoteError(AserpcError):
    """The calculator failed on the worker (deterministic: never retried).

    ``str(e)`` is the remote ``str(exception)``, as 0.1.3 delivered it.

    Attributes
    ----------
    remote_type:
        The remote exception's type, ``"module.QualName"`` or a builtin's bare name
        (``"ValueError"``); ``None`` when the worker does not say (aserpc 0.1.3 workers).
    remote_traceback:
        The remote traceback text, or ``None``.
    """

    def __init__(self, message: str, remote_type: Optional[str] = None,
                 remote_traceback: Optional[str] = None) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


try:  # ase is a dependency, but keep this module importable on its own
    from ase.calculators.calculator import PropertyNotImplementedError as _PNIE
except ImportError:  # pragma: no cover
    _PNIE = NotImplementedError  # type: ignore[misc,assignment]


class RemotePropertyNotImplementedError(RemoteError, _PNIE):  # type: ignore[misc,valid-type]
    """The remote calculator raised ASE's ``PropertyNotImplementedError``; ASE code that
    catches it locally (optimizer filters, ``get_stress`` fallbacks) catches it here too."""


def remote_error(message: str, remote_type: Optional[str] = None,
                 remote_traceback: Optional[str] = None) -> RemoteError:
    """The exception for a failed calculation."""
    if remote_type and remote_type.rsplit(".", 1)[-1] == "PropertyNotImplementedError":
        return RemotePropertyNotImplementedError(message, remote_type, remote_traceback)
    return RemoteError(message, remote_type, remote_traceback)


class BrokerError(AserpcError):
    """An error the broker answered with (an ERROR frame)."""


class NoWorkersError(BrokerError):
    """No worker serves the calculator (and no manager can start one).

    Retryable: a worker may be starting or re-registering.
    """

    retryable = True


class WorkerLostError(BrokerError):
    """The worker died or left during the calculation, or the broker is shutting down."""

    retryable = True


class BrokerUnreachableError(AserpcError, ConnectionError):
    """The broker did not answer ("Broker not reachable at <addr> (timeout: 2000ms)")."""

    retryable = True


class RequestTimeoutError(AserpcError, TimeoutError):
    """No answer in time (a builtin ``TimeoutError``; message as 0.1.3, "Receive timeout (60000ms)").

    Attributes
    ----------
    phase:
        ``"queue"`` while no worker had reported the request (the wait-for-a-worker
        timeout), ``"compute"`` once one had (only known when the broker forwards
        progress), or ``"deadline"`` when the computation deadline passed.
    """

    retryable = True

    def __init__(self, message: str, phase: str = "queue") -> None:
        super().__init__(message)
        self.phase = phase
        # A computation that overran its own deadline would overrun it again.
        self.retryable = phase != "deadline"


class ProtocolError(AserpcError, ValueError):
    """A reply that does not follow the protocol (a ``ValueError``, as 0.1.3's version check)."""


class InvalidInputError(AserpcError, ValueError):
    """A structure that cannot be sent: no atoms, a NaN or infinite position or cell
    component, or a request larger than ``max_message_size``. Raised before anything is
    sent (a ``ValueError``); never retried. Workers refuse the same structures from any
    client with a :class:`RemoteError` of type ``aserpc.InvalidRequest``."""


class ConfigError(AserpcError, ValueError):
    """A configuration value (environment variable or pyproject.toml) is invalid."""


# Broker texts (reference wording, then ours) and the exception each becomes.
_NO_WORKERS = "No workers available for calculator"
_LOST = ("Worker died during calculation", "Worker disconnected during calculation",
         "Broker shutting down")
_QUEUE_TIMEOUT = "Request timed out waiting for"
_QUEUE_FULL = "Queue for calculator"


def broker_error(message: str) -> AserpcError:
    """The exception for an ERROR frame's message."""
    if message.startswith(_NO_WORKERS):
        return NoWorkersError(message)
    if message.startswith(_LOST):
        return WorkerLostError(message)
    if message.startswith(_QUEUE_TIMEOUT):
        return RequestTimeoutError(message, phase="queue")
    if message.startswith(_QUEUE_FULL):
        e = BrokerError(message)
        e.retryable = True  # load: back off and try again
        return e
    return BrokerError(message or "Unknown error")
