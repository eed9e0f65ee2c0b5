"""Connections to a broker's frontend: one zmq context per process, DEALER sockets, correlation.

Every client message is ``["", cmd, args..., corr]``: exactly what a REQ socket sends plus one
trailing correlation frame (8 bytes, unique in the process). aserpc's broker echoes it after
the reply payload (``["", RESPONSE|ERROR, payload, corr]``), so a late reply to an abandoned
request is recognised and dropped; a 0.1.3 broker ignores the frame and echoes nothing, and
then the "Lazy Pirate" rule keeps replies straight: after a timeout the socket is closed and a
new one (a new identity) takes its place, so a socket never has two requests outstanding.

Progress (proposed broker extension, see :class:`Waiter`): a broker may send
``["", PROGRESS, body, corr]`` to a client whose request carried a correlation frame, with
``body`` a msgpack map whose ``"state"`` is ``"queued"``, ``"dispatched"``, ``"busy"`` (the
worker's BUSY heartbeat) or ``"requeued"`` (its worker died; waiting for another).
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import struct
import threading
import time
from typing import Any, List, Optional, Sequence, Tuple

import msgpack
import zmq

from .constants import ERROR, PROGRESS, RESPONSE
from .errors import ProtocolError, RequestTimeoutError

__all__ = ["context", "Connection", "Direct", "DirectLost", "DirectNotYet", "Message", "UnixDirect", "Waiter",
           "new_corr", "open_direct"]

_lock = threading.Lock()
_ctx: Optional[zmq.Context] = None
_ctx_pid = 0
_corr = itertools.count(1)


def context() -> zmq.Context:
    """The process's zmq context (one I/O thread), created on first use and again after fork."""
    global _ctx, _ctx_pid
    with _lock:
        if _ctx is None or _ctx.closed or _ctx_pid != os.getpid():
            _ctx = zmq.Context(io_threads=1)
            _ctx_pid = os.getpid()
        return _ctx


@atexit.register
def _shutdown() -> None:
    # destroy() closes sockets still open (calculators never closed) with linger 0, so exit
    # never waits on them.
    ctx = _ctx
    if ctx is not None and _ctx_pid == os.getpid() and not ctx.closed:
        try:
            ctx.destroy(linger=0)
        except Exception:
            pass


def new_corr() -> bytes:
    """A correlation frame unique in this process (thread-safe: itertools.count is atomic)."""
    return struct.pack("<Q", next(_corr))


class Message:
    """A frontend reply: ``cmd`` (one byte), ``payload``, the echoed ``corr`` (or None), and
    ``extra``: with a session's answer from aserpc's broker, its worker's direct endpoint."""

    __slots__ = ("cmd", "payload", "corr", "extra")

    def __init__(self, cmd: bytes, payload: bytes, corr: Optional[bytes], extra: Optional[bytes] = None) -> None:
        self.cmd, self.payload, self.corr, self.extra = cmd, payload, corr, extra

    def progress_body(self) -> dict:
        try:
            body = msgpack.unpackb(self.payload, raw=False)
        except Exception:
            return {}
        return body if isinstance(body, dict) else {}


class Waiter:
    """When to give up on one request: the wait-for-a-worker timeout and the computation deadline.

    * ``timeout`` — while the request waits for a worker, and whenever nothing has been heard
      for that long. Without broker progress (aserpc 0.1.3's broker, or ours today) nothing is
      heard until the reply, so this is the whole per-attempt limit, as in 0.1.3.
    * ``compute_timeout`` — the longest a computation may run once a worker has reported it
      (``None``: no limit, as long as the worker keeps reporting BUSY).

    Each PROGRESS message restarts the ``timeout`` clock, so a long calculation whose worker
    keeps sending BUSY never times out, while a dead broker is noticed after ``timeout``.
    """

    __slots__ = ("timeout", "compute_timeout", "last", "phase", "compute_started", "_ms")

    def __init__(self, timeout_s: float, compute_timeout_s: Optional[float] = None,
                 now: Optional[float] = None) -> None:
        self.timeout = timeout_s
        self.compute_timeout = compute_timeout_s
        self.last = time.monotonic() if now is None else now
        self.phase = "queue"
        self.compute_started: Optional[float] = None
        self._ms = int(round(timeout_s * 1000))

    def progress(self, body: dict, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        self.last = now
        state = body.get("state")
        if state in ("dispatched", "busy"):
            self.phase = "compute"
            if self.compute_started is None:
                self.compute_started = now
        elif state in ("queued", "requeued"):
            self.phase = "queue"
            self.compute_started = None

    def deadline(self) -> float:
        d = self.last + self.timeout
        if self.compute_started is not None and self.compute_timeout is not None:
            d = min(d, self.compute_started + self.compute_timeout)
        return d

    def error(self, now: Optional[float] = None) -> RequestTimeoutError:
        now = time.monotonic() if now is None else now
        if (self.compute_started is not None and self.compute_timeout is not None
                and now >= self.compute_started + self.compute_timeout):
            ms = int(round(self.compute_timeout * 1000))
            return RequestTimeoutError(f"Computation deadline exceeded (compute_timeout {ms}ms)", phase="deadline")
        if self.phase == "compute":
            return RequestTimeoutError(f"Receive timeout ({self._ms}ms): no progress reported while computing",
                                       phase="compute")
        return RequestTimeoutError(f"Receive timeout ({self._ms}ms)", phase="queue")


def ipc_hint(address: str) -> str:
    """For a timeout on an ipc address whose socket file does not exist: that it is missing,
    which directory was used and why (the default follows the project root or the working
    directory, so a broker started elsewhere listens elsewhere). "" otherwise."""
    if not address.startswith("ipc://"):
        return ""
    path = address[len("ipc://"):]
    if not path or os.path.exists(path):
        return ""
    why = ""
    try:
        from .config import load_config

        cfg = load_config()
        if address == cfg.ipc_frontend:
            src = cfg.sources.get("ipc_frontend", "default")
            if src.startswith("default") or src.startswith("derived"):
                src = cfg.sources.get("ipc_dir", "default")
                if src.startswith("default"):
                    src = ("the default: .aserpc in the project root (the nearest directory with a "
                           "pyproject.toml), else in the working directory")
            why = (f" The address is the configured frontend ({src}); a broker started from another "
                   f"directory listens in that one's .aserpc: pass broker=ADDR, or set ASERPC_IPC_DIR for both.")
    except Exception:
        pass
    return f" — no broker socket at {path} (the file does not exist: no broker listens there).{why}"


class Connection:
    """One DEALER socket to a broker frontend, created lazily (and again after fork or reset).

    Not thread-safe: a zmq socket belongs to one thread at a time; callers serialise.
    """

    def __init__(self, address: str, curve: Optional[Any] = None) -> None:
        self.address = address
        #: :class:`aserpc.curve.CurveKeys` for a tcp broker that authenticates, or None.
        self.curve = curve
        self._sock: Optional[zmq.Socket] = None
        self._pid = 0
        #: The broker echoed a correlation frame: it is aserpc's (0.1.3's never does), so it
        #: understands aserpc's own commands (SESSION_END).
        self.ours = False

    @property
    def socket(self) -> zmq.Socket:
        if self._sock is None or self._pid != os.getpid():
            s = context().socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.apply(s)
            s.connect(self.address)
            self._sock, self._pid = s, os.getpid()
        return self._sock

    def reset(self) -> None:
        """Close the socket; the next use opens a new one (a new identity: late replies are lost)."""
        s, self._sock = self._sock, None
        if s is not None and self._pid == os.getpid():
            try:
                s.close(linger=0)
            except Exception:
                pass

    close = reset

    def notify(self, cmd: bytes, args: Sequence[bytes]) -> None:
        """Send a message that has no reply, best effort, then close the socket (letting it
        leave for up to half a second)."""
        try:
            s = self.socket  # (a new one after a reset: the broker does not need the same)
        except Exception:
            return
        self._sock = None
        try:
            s.send_multipart([b"", cmd, *args], flags=zmq.NOBLOCK)
            s.close(linger=500)
        except Exception:
            try:
                s.close(linger=0)
            except Exception:
                pass

    def send(self, cmd: bytes, args: Sequence[bytes], corr: Optional[bytes], timeout_s: float) -> None:
        frames: List[Any] = [b"", cmd, *args]
        if corr is not None:
            frames.append(corr)
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # No connection can take it (high-water mark): wait up to the timeout.
            if not self.socket.poll(int(timeout_s * 1000), zmq.POLLOUT):
                self.reset()
                raise RequestTimeoutError(f"Send timeout ({int(round(timeout_s * 1000))}ms)"
                                          + ipc_hint(self.address)) from None
            self.socket.send_multipart(frames, copy=False)

    def recv(self, timeout_s: float) -> Optional[Message]:
        """The next message, or None when none arrives within ``timeout_s``."""
        s = self.socket
        if not s.poll(max(0, int(timeout_s * 1000 + 0.999))):
            return None
        return parse(s.recv_multipart(zmq.NOBLOCK))

    def exchange(self, cmd: bytes, args: Sequence[bytes], waiter: Waiter) -> Message:
        """Send one message and wait for its reply, honouring progress (one in flight)."""
        corr = new_corr()
        self.send(cmd, args, corr, waiter.timeout)
        while True:
            now = time.monotonic()
            left = waiter.deadline() - now
            if left <= 0:
                self.reset()  # Lazy Pirate: the late reply must not reach the next request
                err = waiter.error(now)
                hint = ipc_hint(self.address)
                if hint:
                    err = RequestTimeoutError(str(err) + hint, phase=err.phase)
                raise err
            m = self.recv(left)
            if m is None:
                continue
            if m.corr is not None and m.corr != corr:
                continue  # the late reply of an abandoned request
            if m.corr is not None:
                self.ours = True
            if m.cmd == PROGRESS:
                waiter.progress(m.progress_body())
                continue
            return m


def parse(frames: List[bytes]) -> Message:
    if len(frames) < 3 or frames[0] != b"":
        raise ProtocolError(f"Invalid response: {[f[:16] for f in frames]!r}")
    return Message(frames[1], frames[2], frames[3] if len(frames) > 3 else None,
                   frames[4] if len(frames) > 4 else None)


def _answers(m: Message, corr: bytes, waiter: Waiter) -> bool:
    """Whether a worker's direct message is the reply to request ``corr``: a late message of
    an earlier request is not, nor a PROGRESS (which the waiter takes)."""
    if m.corr != corr:
        return False
    if m.cmd == PROGRESS:
        waiter.progress(m.progress_body())
        return False
    return True


class DirectLost(Exception):
    """The direct path to a session's worker is gone (the worker exited, or never listened):
    the request goes through the broker instead."""


class DirectNotYet(DirectLost):
    """The direct connection is not up (yet): this request goes through the broker, the
    next one tries again."""


class Direct:
    """A session's straight line to its worker next to a tcp broker: a DEALER on the worker's
    own CURVE tcp socket, with a monitor that reports the connection coming up and closing (the
    worker died), so that the caller falls back to the broker at once instead of waiting out
    its timeout."""

    def __init__(self, endpoint: str, keys: Optional[Tuple[bytes, bytes]] = None) -> None:
        """``endpoint`` is what the broker sent: ``tcp://HOST:PORT KEY`` with the worker's
        CURVE public key (a worker on this host announces ``unix://``: :class:`UnixDirect`);
        ``keys`` (public, secret) are this client's own (default: a pair made here)."""
        address, _, server_key = endpoint.partition(" ")
        self.endpoint = endpoint
        self.address = address
        self._pid = os.getpid()
        self._up = False
        self._waited = False
        s = context().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        # Only a connected peer takes a message: a worker this host cannot reach costs a
        # refused send (through the broker at once), never a timeout.
        s.setsockopt(zmq.IMMEDIATE, 1)
        if address.startswith("tcp://"):
            if len(server_key) != 40:
                s.close(linger=0)
                raise ValueError(f"a tcp direct endpoint without its CURVE key: {endpoint!r}")
            public, secret = keys or zmq.curve_keypair()
            s.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode())
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self._mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                         | zmq.EVENT_CLOSED)
        s.connect(address)
        self._sock: Optional[zmq.Socket] = s

    def usable(self) -> bool:
        return self._sock is not None and self._pid == os.getpid()

    def close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None and self._pid == os.getpid():
            try:
                s.disable_monitor()
                self._mon.close(linger=0)
                s.close(linger=0)
            except Exception:
                pass

    def _news(self, wait_ms: int = 0) -> bool:
        """Read the connection's events (waiting up to wait_ms for the first); True when it
        closed since the last look."""
        from zmq.utils.monitor import recv_monitor_message

        lost = False
        while self._mon.poll(wait_ms):
            wait_ms = 0
            ev = recv_monitor_message(self._mon, zmq.NOBLOCK)["event"]
            if ev in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                lost, self._up = self._up or lost or ev == zmq.EVENT_CLOSED, False
            elif ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:  # (ZMTP's, after CONNECTED: then a send goes)
                self._up = True
        return lost

    def exchange(self, cmd: bytes, args: Sequence[bytes], waiter: Waiter) -> Message:
        """Send one request to the worker and wait for its reply (RESPONSE, or ERROR when it
        no longer holds the session); DirectLost when the connection closed, DirectNotYet when
        it is not up."""
        s = self._sock
        if s is None:
            raise DirectLost("closed")
        # News of the connection since the last request (the worker exited between them):
        # through the broker before sending, so nothing is computed twice.
        if self._news():
            raise DirectLost(f"the connection to {self.address} closed")
        if not self._up and not self._waited:  # a new connection: one moment to come up
            self._waited = True
            if self._news(20):
                raise DirectLost(f"the connection to {self.address} closed")
        corr = new_corr()
        try:
            s.send_multipart([b"", cmd, *args, corr], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise DirectNotYet(f"no connection to {self.address} (yet)") from None
        while True:
            left = waiter.deadline() - time.monotonic()
            if left <= 0:
                raise waiter.error()
            # The reply first (one socket: the fast path), the connection's news every 50 ms.
            if not s.poll(max(0, min(50, int(left * 1000 + 0.999)))):
                if self._news():
                    raise DirectLost(f"the connection to {self.address} closed")
                continue
            m = parse(s.recv_multipart(zmq.NOBLOCK))
            if _answers(m, corr, waiter):
                return m

_U32 = struct.Struct("<I")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class UnixDirect:
    """A session's straight line to a worker on this host: a plain unix stream socket
    (``unix://PATH``, the worker's ``worker/unixdirect.go``), written and read by this thread
    with system calls. libzmq's ipc wakes both sides' I/O threads on every message; here a
    message wakes at most the receiving process, and none while it spins (the worker after a
    job, this client for ``spin_us``): most of a session's gain on a small system.

    A message is a little-endian uint32 length and the body: frames, each a uint32 length
    and its bytes. The request is ``[REQUEST, calculator, payload, corr]``, a reply
    ``[RESPONSE | ERROR | PROGRESS, body, corr]``. A worker that exited closes the socket:
    the next send or receive fails, and the request goes through the broker."""

    def __init__(self, endpoint: str, path: str, spin_us: int = 0) -> None:
        """``endpoint``: what the broker announced; ``path``: the socket's. ``spin_us``: how
        long to busy-poll for a reply before sleeping in ``recv`` (on one CPU never: the
        worker would wait for it)."""
        self.endpoint = endpoint
        self.address = "unix://" + path
        self._pid = os.getpid()
        self._spin = spin_us / 1e6 if spin_us > 0 and _cpus() > 1 else 0.0
        self._buf = bytearray()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError as e:
            s.close()
            raise DirectLost(f"cannot connect to {self.address}: {e}") from None
        self._sock: Optional[socket.socket] = s

    def usable(self) -> bool:
        return self._sock is not None and self._pid == os.getpid()

    def close(self) -> None:
        s, self._sock = self._sock, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    def exchange(self, cmd: bytes, args: Sequence[bytes], waiter: Waiter) -> Message:
        """Send one request and wait for its reply (RESPONSE, or ERROR when the worker no
        longer holds the session); DirectLost when the connection is gone."""
        s = self._sock
        if s is None:
            raise DirectLost("closed")
        corr = new_corr()
        parts = [b""]
        n = 0
        for f in (cmd, *args, corr):
            parts += (_U32.pack(len(f)), f)
            n += 4 + len(f)
        parts[0] = _U32.pack(n)
        try:
            s.settimeout(max(waiter.deadline() - time.monotonic(), 0.001))
            s.sendall(b"".join(parts))
        except socket.timeout:
            raise waiter.error() from None
        except OSError as e:  # the worker exited (EPIPE, ECONNRESET)
            raise DirectLost(f"the connection to {self.address} closed: {e}") from None
        while True:
            frames = self._message(s, waiter)
            if len(frames) < 2 or len(frames[0]) != 1:
                raise DirectLost(f"invalid direct reply: {[bytes(f[:16]) for f in frames]!r}")
            m = Message(frames[0], frames[1], frames[2] if len(frames) > 2 else None)
            if _answers(m, corr, waiter):
                return m

    def _message(self, s: socket.socket, waiter: Waiter) -> List[bytes]:
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = _U32.unpack_from(buf)
                if len(buf) >= 4 + n:
                    body = bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    frames, i = [], 0
                    while i < n:
                        if n - i < 4:
                            raise DirectLost("invalid direct reply: a frame past its end")
                        (k,) = _U32.unpack_from(body, i)
                        frames.append(body[i + 4:i + 4 + k])
                        i += 4 + k
                    if i != n:
                        raise DirectLost("invalid direct reply: a frame past its end")
                    return frames
            now = time.monotonic()
            left = waiter.deadline() - now
            if left <= 0:
                raise waiter.error()
            try:
                data = None
                if self._spin:
                    # A reply that comes within the spin needs no wake-up of this process
                    # (on a VM that alone is tens of µs); the yield leaves the CPU to any
                    # other runnable task, the worker included.
                    s.settimeout(0.0)
                    until = now + min(self._spin, left)
                    while True:
                        try:
                            data = s.recv(1 << 16)
                            break
                        except BlockingIOError:
                            if time.monotonic() > until:
                                break
                            os.sched_yield()
                if data is None:
                    s.settimeout(left)
                    data = s.recv(1 << 16)
            except socket.timeout:
                continue  # the deadline decides (progress may have moved it)
            except OSError as e:
                raise DirectLost(f"the connection to {self.address} closed: {e}") from None
            if not data:
                raise DirectLost(f"the worker at {self.address} closed the connection")
            buf += data


def boot_id() -> str:
    """This host's kernel boot id ("" where there is none to read)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def open_direct(endpoint: str, keys: Optional[Tuple[bytes, bytes]] = None, spin_us: int = 0) -> Any:
    """The direct path the broker announced (``wire.WorkerInfo.Endpoint``): ``unix://PATH``
    (a worker next to an ipc broker), or ``tcp://HOST:PORT KEY`` (zmq with the worker's CURVE
    key) optionally followed by ``BOOT unix://PATH``: the worker's own unix socket, used when
    this client runs on the worker's host (same kernel boot id) and can connect to it. A unix
    socket is polled for ``spin_us`` before sleeping."""
    if endpoint.startswith("unix://"):
        return UnixDirect(endpoint, endpoint[len("unix://"):], spin_us)
    head, sep, path = endpoint.partition(" unix://")
    if sep:
        parts = head.split(" ")
        if len(parts) == 3 and parts[2] and parts[2] == boot_id():
            try:
                return UnixDirect(endpoint, path, spin_us)
            except DirectLost:
                pass  # not this host's after all (another mount namespace): tcp
        head = " ".join(parts[:2])
    d = Direct(head, keys)
    d.endpoint = endpoint
    return d


def expect_reply(m: Message, what: str = "Unexpected response type") -> Tuple[bool, bytes]:
    """(is_error, payload) of a RESPONSE or ERROR; anything else is a ProtocolError."""
    if m.cmd == RESPONSE:
        return False, m.payload
    if m.cmd == ERROR:
        return True, m.payload
    raise ProtocolError(f"{what}: {m.cmd!r}")
