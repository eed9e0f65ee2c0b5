"""Z85 (ZeroMQ's base-85) CURVE keys, recognised without zmq: both the configuration (a key
given inline or as a file) and :mod:`aserpc.curve` ask."""

from typing import Union

_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def is_z85_key(v: Union[str, bytes]) -> bool:
    """Whether ``v`` looks like a CURVE key in Z85 (40 characters of its alphabet)."""
    s = v.decode("ascii", "replace") if isinstance(v, bytes) else v
    return len(s) == 40 and all(c in _Z85 for c in s)
