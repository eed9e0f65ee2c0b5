"""CurveZMQ for ``tcp://`` brokers: the broker's public key and this client's certificate.

A broker started with ``--curve-secret`` and ``--authorized-keys`` admits on its tcp
endpoints only the keys it lists (README, "Security"). A client then needs

* the broker's **public key** — 40 characters of Z85, or the broker's ``.key`` file;
* its own **secret certificate** — a ``.key_secret`` file made by ``aserpc keys generate``
  or ``zmq.auth.create_certificates``, or a ``(public, secret)`` pair of Z85 keys.

Give them to :class:`~aserpc.RemoteCalculator` and the helpers as ``curve_server_key=`` and
``curve_secret=``, or set ``curve_server_key`` / ``curve_secret`` in ``[tool.aserpc]`` or
``ASERPC_CURVE_SERVER_KEY`` / ``ASERPC_CURVE_SECRET``. ``ipc://`` addresses never use CURVE
(the broker's socket directory is private to its user), so the keys are then ignored.

A broker that does not know the key does not answer at all (the handshake fails before any
message): the client sees a timeout, whose message says so.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Tuple, Union

from ._z85 import is_z85_key
from .config import load_config
from .errors import ConfigError

__all__ = ["CurveKeys", "is_z85_key", "resolve_curve", "secured"]


KeyLike = Union[str, bytes]


class CurveKeys(NamedTuple):
    """Z85 keys a CURVE client socket needs."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    def apply(self, sock) -> None:  # type: ignore[no-untyped-def]
        """Make ``sock`` (a zmq socket, before connect) a CURVE client of the broker."""
        import zmq

        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


def secured(address: str) -> bool:
    """Whether CURVE applies to ``address``: anything but ``ipc://`` and ``inproc://``."""
    return not address.startswith(("ipc://", "inproc://"))


def _load(path: str, what: str) -> Tuple[bytes, Optional[bytes]]:
    import zmq.auth

    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"curve: {what} {path!r}: {e}") from None


def resolve_curve(address: str, server_key: Optional[KeyLike] = None,
                  secret: Union[None, str, os.PathLike, Tuple[KeyLike, KeyLike]] = None) -> Optional[CurveKeys]:
    """The CURVE keys for a connection to ``address``, or None (plaintext).

    Arguments win over the configuration (``curve_server_key``, ``curve_secret``), which is
    read only for secured (tcp) addresses. Neither set: None, plaintext as aserpc 0.1.3.

    Raises
    ------
    ConfigError
        Only one of the two is set, a file does not load, or a key is not Z85.
    """
    if not secured(address):
        return None
    if server_key is None or secret is None:
        cfg = load_config()
        if server_key is None:
            server_key = cfg.curve_server_key
        if secret is None:
            secret = cfg.curve_secret
    if server_key is None and secret is None:
        return None
    if server_key is None:
        raise ConfigError("curve: a client certificate but no broker key "
                          "(give curve_server_key= or set curve_server_key)")
    if secret is None:
        raise ConfigError("curve: a broker key but no client certificate "
                          "(give curve_secret= or set curve_secret)")
    if is_z85_key(server_key):
        sk = server_key.encode() if isinstance(server_key, str) else bytes(server_key)
    else:
        sk = _load(os.fsdecode(server_key), "broker key file")[0]
    if isinstance(secret, tuple):
        pub, sec = (k.encode() if isinstance(k, str) else bytes(k) for k in secret)
    else:
        pub, sec_opt = _load(os.fspath(secret), "client certificate")  # type: ignore[arg-type]
        if not sec_opt:
            raise ConfigError(f"curve: {os.fspath(secret)!r} has no secret-key "
                              "(give the .key_secret file, not the public .key)")
        sec = sec_opt
    for name, k in (("broker key", sk), ("client public key", pub), ("client secret key", sec)):
        if not is_z85_key(k):
            raise ConfigError(f"curve: the {name} is not 40 characters of Z85")
    return CurveKeys(sk, pub, sec)
