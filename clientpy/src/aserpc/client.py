"""RemoteCalculator and the broker helpers (aserpc 0.1.3's ``aserpc.client``, improved).

Thread-safety: a :class:`RemoteCalculator` may be shared between threads — its calls are
serialised by a lock (one request at a time per calculator) — but like any ASE calculator it
holds the results of one structure, so give each thread its own calculator to compute in
parallel (or use :func:`aserpc.calculate_many`). The helpers are safe to call from any
thread. All sockets share one zmq context per process (recreated after ``fork``).
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
import uuid
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import msgpack
import numpy as np
from ase.calculators.calculator import Calculator, Parameters, PropertyNotImplementedError, all_changes

from . import protocol
from .batch import calculate_many
from ._request import (DEFAULT_PROPERTIES, _broker, atoms_extension, backoff_delay,  # noqa: F401 (re-exported)
                       default_properties, encode_atoms)
from ._state import compare_atoms
from ._transport import Connection, DirectLost, DirectNotYet, Waiter, expect_reply, ipc_hint, open_direct
from .config import load_config
from .curve import resolve_curve
from .constants import LIST, REQUEST, RESPONSE, SESSION_END, SHUTDOWN, STATUS, WORKER_SHUTDOWN
from .errors import (AserpcError, BrokerUnreachableError, ProtocolError, RemoteError,
                     RemotePropertyNotImplementedError,
                     RequestTimeoutError, broker_error)

__all__ = [
    "RemoteCalculator",
    "list_calculators",
    "broker_status",
    "shutdown_workers",
    "shutdown_broker",
    "DEFAULT_PROPERTIES",
]

log = logging.getLogger("aserpc.client")

_PROBE_TIMEOUT_MS = 2000  # as 0.1.3's check_broker


class RemoteCalculator(Calculator):
    """An ASE calculator computed by an aserpc worker through a broker.

    Same signature and meaning as aserpc 0.1.3, plus keyword-only options.

    Parameters
    ----------
    calc_name:
        The calculator name workers registered (``"LJ"``, ``"mace_mp"``, ...).
    broker:
        Broker frontend address (default: ``ipc_frontend`` of the configuration).
    timeout:
        Milliseconds (default: ``client_timeout_ms``, 60000). The **wait-for-a-worker**
        timeout, and the longest the client waits without hearing from the broker. With
        aserpc 0.1.3's broker (or any broker that does not forward progress) that is the
        whole per-attempt limit, exactly as in 0.1.3. With a broker that forwards worker
        progress (BUSY), each report restarts it, so a long calculation never times out
        while its worker is alive.
    check_broker:
        Ask the broker for its calculator list at construction (2000 ms) and raise
        :class:`~aserpc.errors.BrokerUnreachableError` (a ``ConnectionError``) when it does
        not answer.
    retries:
        Further attempts after a failure that may be transient: a timeout, a worker that
        died or left, a broker restart, no worker registered (yet). Attempts are spaced by
        exponential backoff with jitter (0.1 s doubling up to 5 s). A calculator's own error
        (:class:`~aserpc.errors.RemoteError`) is never retried.
    timeout_ms:
        Alias of ``timeout`` (mlipx passes it).
    compute_timeout:
        Milliseconds: the **computation deadline**, counted from when a worker took the
        request (``None``, the default: no limit while the worker reports progress). Only
        enforceable with a broker that forwards progress.
    typed_results:
        Ask the worker for results with their dtype and shape (aserpc's worker; a 0.1.3
        worker ignores the request and sends flat float64 arrays, ``forces`` reshaped).
    curve_server_key, curve_secret:
        CurveZMQ for a ``tcp://`` broker that authenticates (see :mod:`aserpc.curve`): the
        broker's public key (Z85 or its ``.key`` file) and this client's ``.key_secret``
        file (default: ``curve_server_key`` / ``curve_secret`` of the configuration; unset:
        plaintext). Ignored for ``ipc://``.
    send_info:
        Send ``atoms.info`` (charge, spin, ...; JSON-like entries only, others skipped) and
        extra per-atom arrays (initial_magmoms, initial_charges, tags, masses, custom ones;
        not momenta) with each request. A 0.1.3 worker ignores them.
    prefetch:
        Compute energy and forces, and stress when the system is periodic in all three
        directions, with whatever ASE asks for, in the same round trip (default; aserpc
        0.1.3 did the same). ``False``: ask only for what ASE asks, so that ``results`` (and
        the files written from it) hold exactly what the in-process calculator would.
    affinity:
        Prefer the worker that served this calculator's previous request, when it is idle
        (default): a stateful calculator (a DFT code restarting its SCF from the last density,
        neighbour lists, caches) then continues from this calculator's own last structure, not
        another client's. ``False``: the least recently used worker, as aserpc 0.1.3.
    session:
        Reserve the worker that serves this calculator's first request for this calculator
        alone (aserpc's broker; needs ``affinity``): every later request goes to it, and no other
        client's does, so a stateful code sees exactly this calculator's sequence of structures
        however many clients share the workers. Other clients get the other workers, or wait.
        The reservation ends with :meth:`close` (or ``with``), after ``session_timeout`` seconds
        without a request (how the broker learns that a client died or forgot to close), or
        when the worker is lost (the next request then reserves another, whose state starts
        afresh). ``aserpc status`` lists the reservations. A 0.1.3 broker ignores it.
    session_timeout:
        Seconds without a request after which the broker releases the session's worker
        (default 60; time spent computing does not count).
    spin_us:
        In a session whose worker runs on this host, how long to busy-poll for each reply
        before sleeping (default: ``client_spin_us`` of the configuration, 1000 µs; 0 =
        never; never on a single CPU). A reply that comes within it needs no wake-up of
        this process, which on a small system is a large part of the round trip; at most
        this much CPU per request is spent waiting.
    all_results:
        Bring back every result of the calculation, as an in-process calculator holds them
        (default). ``False``: only the properties asked for (and prefetched), as aserpc 0.1.3 —
        fewer bytes when a calculator keeps large per-atom results nobody reads (LennardJones'
        per-atom ``stresses`` make a 10k-atom reply 3.3x bigger; docs/fidelity.md).
    max_message_size:
        Bytes (default: ``max_message_size`` of the configuration, 256 MiB, the broker's
        default): a bigger request raises :class:`~aserpc.errors.InvalidInputError` instead of
        being sent to a broker that would drop it.
    **kwargs:
        Passed to ASE's ``Calculator`` (``label``, ``directory``, ...).

    Notes
    -----
    One round trip computes energy and forces, and stress when the system is periodic in
    all three directions and the remote calculator implements it (unless ``prefetch`` is
    off), and brings back everything else the calculation produced (free energy, per-atom
    energies ...); results are merged, so ``get_potential_energy()`` then ``get_forces()``
    costs one round trip. A change of
    ``atoms.info`` (or of a sent per-atom array) invalidates cached results.

    Use as a context manager or call :meth:`close` to release the socket early.
    """

    @property
    def implemented_properties(self) -> List[str]:  # type: ignore[override]
        """The served calculator's ``implemented_properties``, as its worker says.

        Read before the first calculation (``SumCalculator`` and ASE's vdW corrections read
        it when they are built), it asks a worker to describe itself: one short round trip,
        once. Until a worker of aserpc's has answered (a 0.1.3 worker never does, and one
        that cannot be reached is logged), it is aserpc 0.1.3's energy, forces and stress.
        """
        d = self.__dict__
        if not d.get("_described") and not d.get("_describe_tried") and "_conn" in d:
            self._describe()
        return d.get("_implemented", list(DEFAULT_PROPERTIES))

    @implemented_properties.setter
    def implemented_properties(self, value: Sequence[str]) -> None:
        self.__dict__["_implemented"] = list(value)

    def __init__(self, calc_name: str, broker: Optional[str] = None, timeout: Optional[int] = None,
                 check_broker: bool = True, retries: int = 0, *, timeout_ms: Optional[int] = None,
                 compute_timeout: Optional[float] = None, typed_results: bool = True,
                 send_info: bool = True, prefetch: bool = True, all_results: bool = True,
                 affinity: bool = True, session: bool = False, session_timeout: float = 60.0,
                 max_message_size: Optional[int] = None, spin_us: Optional[int] = None,
                 curve_server_key: Optional[Any] = None, curve_secret: Optional[Any] = None,
                 **kwargs: Any) -> None:
        if timeout_ms is not None:
            if timeout is not None and timeout != timeout_ms:
                raise TypeError("give timeout or timeout_ms, not both")
            timeout = timeout_ms
        super().__init__(**kwargs)
        self.calc_name = calc_name
        self.broker = _broker(broker)
        cfg = load_config() if timeout is None or max_message_size is None or spin_us is None else None
        self.timeout = int(timeout) if timeout is not None else cfg.client_timeout_ms
        #: Largest request sent (bytes); a bigger one raises InvalidInputError at once.
        self.max_message_size = int(max_message_size) if max_message_size is not None else cfg.max_message_size
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        #: µs a session's client busy-polls for its worker's reply on the direct path.
        self.spin_us = max(0, int(spin_us if spin_us is not None else cfg.client_spin_us))
        self.compute_timeout = compute_timeout
        self.retries = max(0, int(retries))
        self.typed_results = typed_results
        self.send_info = send_info
        self.prefetch = prefetch
        self.all_results = all_results
        self.affinity = affinity
        self._affinity_key = uuid.uuid4().hex[:16]
        if session and not affinity:
            raise ValueError("session=True needs affinity=True (a session is this calculator's key)")
        if not session_timeout > 0:
            raise ValueError(f"session_timeout must be positive, not {session_timeout!r}")
        self.session = bool(session)
        self.session_timeout = float(session_timeout)
        self._implemented = list(DEFAULT_PROPERTIES)
        self._described = False  # the worker told us what it implements
        self._describe_tried = False  # a describe-only request was answered without it
        #: What the worker said it serves (``{"class", "name", "parameters", "kwargs"}``), or {}
        #: until a worker of aserpc's has computed for this calculator.
        self.served: Dict[str, Any] = {}
        self._skip_extra: set = set()  # opportunistic properties the remote refused
        self._sent_ext: Any = None
        self._lock = threading.RLock()
        self._curve = resolve_curve(self.broker, curve_server_key, curve_secret)
        self._conn = Connection(self.broker, self._curve)
        #: Round trips made (REQUESTs sent, retries included).
        self.round_trips = 0
        #: Of those, the ones a session's worker answered directly (without the broker).
        self.direct_round_trips = 0
        if check_broker:
            self._check_broker()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the socket (it is reopened if the calculator is used again) and end the
        session, if any: its worker goes back to everyone."""
        with self._lock:
            self._drop_direct()
            self._end_session()
            self._conn.close()

    def _end_session(self) -> None:
        d = self.__dict__
        if d.get("session") and d.get("_in_session") and d.get("_key_pid") == os.getpid() and self._conn.ours:
            d["_in_session"] = False
            self._conn.notify(SESSION_END, [self.calc_name.encode(), d["_affinity_key"].encode()])

    def __enter__(self) -> "RemoteCalculator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop_direct()
            self._end_session()
            self._conn.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"RemoteCalculator({self.calc_name!r}, broker={self.broker!r})"

    # Pickling and copying (multiprocessing pools, Dask, workflow engines, copy.deepcopy of
    # atoms): the name, broker address, options, CURVE keys and ASE's state (atoms, results,
    # parameters) travel; the socket and the lock do not. A copy opens its own connection on
    # first use.

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"], state["_conn"]
        state.pop("_direct", None)
        state["round_trips"] = 0
        state["direct_round_trips"] = 0
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        # A copy is another client: it must not pull its original's worker towards itself,
        # nor hold its session.
        self._affinity_key = uuid.uuid4().hex[:16]
        self.__dict__["_in_session"] = False
        self._lock = threading.RLock()
        self._conn = Connection(self.broker, self._curve)

    @property
    def name(self) -> str:  # type: ignore[override]
        """The served calculator's ASE name (``"emt"``, ``"mace"`` ...), as an in-process one
        writes it into trajectories and databases; ``"remotecalculator"`` until a worker of
        aserpc's has described it (after the first calculation; a 0.1.3 worker never does)."""
        d = self.__dict__  # (read before __init__ has set served: ASE's __init__ asks)
        return d.get("_name") or (d.get("served") or {}).get("name") or "remotecalculator"

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    def _check_broker(self) -> None:
        with self._lock:
            try:
                m = self._conn.exchange(LIST, [], Waiter(_PROBE_TIMEOUT_MS / 1000))
            except RequestTimeoutError:
                raise BrokerUnreachableError(
                    f"Broker not reachable at {self.broker} (timeout: {_PROBE_TIMEOUT_MS}ms)"
                    + _curve_hint(self._curve)) from None
            except ProtocolError as e:
                self._conn.reset()
                raise BrokerUnreachableError(f"Invalid response from broker: {e}") from None
            if m.cmd != b"\x05":
                raise BrokerUnreachableError(f"Invalid response from broker: {m.cmd!r}")
        try:
            names = msgpack.unpackb(m.payload, raw=False, strict_map_key=False)
        except Exception:
            return
        if isinstance(names, dict) and names and self.calc_name not in names:
            known = sorted(str(n) for n in names)
            lower = {k.lower(): k for k in known}
            close = difflib.get_close_matches(self.calc_name.lower(), list(lower), n=1)
            hint = f"; did you mean {lower[close[0]]!r}?" if close else ""
            # A warning, not an error: a worker may register later (as 0.1.3 allows).
            warnings.warn(f"no worker serves {self.calc_name!r} and no manager of the broker at "
                          f"{self.broker} can start one (it knows {known}){hint}", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ ASE interface

    def check_state(self, atoms: Any, tol: float = 1e-15) -> List[str]:
        """ASE's check, plus ``"info"`` when atoms.info or a sent per-atom array changed.

        ASE's answer, computed without its four calls of ``np.allclose`` (see ``_state``):
        an MD step checks twice, which cost a third of the client's side of the step.
        """
        if self.atoms is None:
            return list(all_changes)
        changes = compare_atoms(self.atoms, atoms, tol, self.ignored_changes)
        if not changes and self.send_info and self._extension(atoms) != self._sent_ext:
            changes.append("info")
        return changes

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        # ASE's logic, except that a name outside implemented_properties is still asked for
        # while the worker has not said what it implements (a 0.1.3 worker never does).
        if name not in self._implemented and self._described:
            raise PropertyNotImplementedError(f"{name} property not implemented")
        if atoms is None:
            atoms = self.atoms
            system_changes: List[str] = []
        else:
            system_changes = self.check_state(atoms)
            if system_changes:
                self.reset()
        if name not in self.results:
            if not allow_calculation:
                return None
            self.calculate(atoms, [name], system_changes)
        if name not in self.results:
            raise PropertyNotImplementedError(f"{name} not present in this calculation")
        result = self.results[name]
        if isinstance(result, np.ndarray):
            result = result.copy()
        return result

    def calculate(self, atoms: Any = None, properties: Optional[Sequence[str]] = None,
                  system_changes: Sequence[str] = tuple(all_changes)) -> None:
        """Compute ``properties`` (default: energy, forces, and stress when periodic) remotely.

        The energy and forces (and stress for periodic systems) come along in the same
        round trip and are merged into ``results``.
        """
        if atoms is None:
            atoms = self.atoms
        if atoms is None:
            raise ValueError("no atoms to calculate")
        asked = list(dict.fromkeys(properties)) if properties else []
        if not asked:
            asked, extra = self._opportunistic(atoms), []
        else:
            extra = [p for p in self._opportunistic(atoms) if p not in asked] if self.prefetch else []
        ext = self._extension(atoms) if self.send_info else None
        with self._lock:
            self.atoms = atoms.copy()
            if system_changes:
                self.results = {}
            try:
                # Standard properties first: a 0.1.3 worker computes only those and reads any
                # other name from what the calculator holds, which must be this structure's.
                results = self._compute(atoms, extra + asked, ext)
            except RemoteError as e:
                # Only a refusal of a property (or a worker that does not say why) may
                # come from an opportunistic property; any other error is the calculation's.
                if not extra or (e.remote_type and not isinstance(e, RemotePropertyNotImplementedError)):
                    raise
                # Maybe an opportunistic property failed (stress of a calculator without
                # it): ask again for what was asked, and stop adding those if that works.
                try:
                    results = self._compute(atoms, asked, ext)
                except RemoteError:
                    raise e from None  # the first message is the calculation's own
                self._skip_extra.update(extra)
                log.info("%s: %s refused with %s; not asking for them again", self.calc_name,
                         extra, asked)
            self._sent_ext = ext
            for k, v in results.items():
                if v is not None:
                    self.results[k] = v

    def _opportunistic(self, atoms: Any) -> List[str]:
        return [p for p in default_properties(atoms, self._implemented)
                if p not in self._skip_extra]

    def _extension(self, atoms: Any) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
        return atoms_extension(atoms)

    # ------------------------------------------------------------------ the round trip

    def _compute(self, atoms: Any, properties: Sequence[str], ext: Any) -> Dict[str, Any]:
        info, arrays = ext if ext else (None, None)
        # Every result of the calculation comes back (free_energy, energies ...), as an
        # in-process calculator holds them; the worker describes itself once.
        extra = {"all_results": True} if self.all_results else {}
        if self.__dict__.get("affinity", True):
            d = self.__dict__
            if d.get("_key_pid", os.getpid()) != os.getpid():
                # A forked child is another client: its own key, not its parent's session.
                d["_affinity_key"], d["_in_session"] = uuid.uuid4().hex[:16], False
            d["_key_pid"] = os.getpid()
            key = d.get("_affinity_key")
            if key is None:
                key = d["_affinity_key"] = uuid.uuid4().hex[:16]
            extra["affinity"] = key
            if self.__dict__.get("session"):
                extra["session"] = self.session_timeout
                self.__dict__["_in_session"] = True
        if not self._described:
            extra["describe"] = True
        payload = encode_atoms(atoms, properties, info, arrays, self.typed_results, extra,
                               self.max_message_size)
        reply = self._request(payload, len(atoms))
        if not self._described:
            self._learn(reply.ext)
        order = reply.ext.get("results_order")
        if isinstance(order, list):  # the calculator's own order (element 2 is sorted)
            res = reply.results
            return {**{k: res[k] for k in order if isinstance(k, str) and k in res}, **res}
        return reply.results

    def _describe(self) -> None:
        """Ask a worker what it serves, computing nothing (one H atom, no properties)."""
        with self._lock:
            if self._described or self._describe_tried:
                return
            payload = protocol.encode_request(np.ones(1, dtype=np.int32), np.zeros((1, 3)), np.zeros((3, 3)),
                                              np.zeros(3, dtype=bool), [], extra={"describe": True})
            try:
                reply = self._request(payload, None)
            except AserpcError as e:
                log.warning("%s: could not ask a worker what it implements (%s); assuming %s until "
                            "the first calculation", self.calc_name, e, list(DEFAULT_PROPERTIES))
                return
            self._learn(reply.ext)
            self._describe_tried = True

    def _learn(self, ext: Dict[str, Any]) -> None:
        """Take what a worker said it serves (the answer to ``describe``)."""
        impl = ext.get("implemented_properties")
        if not (isinstance(impl, list) and all(isinstance(p, str) for p in impl)):
            return  # a 0.1.3 worker: keep assuming energy, forces and stress
        self._implemented = list(impl)
        self._described = True
        served = ext.get("calculator")
        if isinstance(served, dict):
            self.served = dict(served)
            params = served.get("parameters")
            if isinstance(params, dict):
                # What todict() returns, so trajectories and databases record what an
                # in-process calculator records.
                self.parameters = Parameters(params)

    def _via_direct(self, args: List[bytes], waiter: Waiter) -> Any:
        """The reply of the session's worker on the direct path, or None: no direct path, or it
        failed (the worker is gone, or no longer holds the session), and the request goes
        through the broker. A timeout is a timeout, as through the broker."""
        d = self.__dict__.get("_direct")
        if d is None:
            return None
        if not d.usable():
            self._drop_direct()
            return None
        try:
            m = d.exchange(REQUEST, args, waiter)
        except DirectNotYet:
            return None  # connecting: through the broker this time, directly the next
        except DirectLost as e:
            log.debug("direct path lost (%s): through the broker", e)
            self._drop_direct()
            waiter.__init__(waiter.timeout, waiter.compute_timeout)  # a fresh clock for the broker
            return None
        except RequestTimeoutError:
            self._drop_direct()
            raise
        if m.cmd != RESPONSE:
            log.debug("the session's worker refused a direct request: through the broker")
            self._drop_direct()
            waiter.__init__(waiter.timeout, waiter.compute_timeout)
            return None
        self.direct_round_trips += 1
        return m

    def _drop_direct(self) -> None:
        d = self.__dict__.pop("_direct", None)
        if d is not None:
            d.close()

    def _request(self, payload: bytes, n_atoms: Optional[int]) -> protocol.Reply:
        """Send one REQUEST, retrying transient failures with backoff."""
        attempts = 1 + self.retries
        args = [self.calc_name.encode(), payload]
        for i in range(attempts):
            try:
                return self._once(args, n_atoms)
            except AserpcError as e:
                if not e.retryable or i == attempts - 1:
                    raise
                delay = backoff_delay(i)
                log.warning("Attempt %d/%d failed: %s, retrying in %.2fs...", i + 1, attempts, e, delay)
                self._conn.reset()
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _waiter(self) -> Waiter:
        return Waiter(self.timeout / 1000, None if self.compute_timeout is None else self.compute_timeout / 1000)

    def _once(self, args: List[bytes], n_atoms: Optional[int]) -> protocol.Reply:
        waiter = self._waiter()
        self.round_trips += 1
        m = self._via_direct(args, waiter)
        if m is None:
            m = self._conn.exchange(REQUEST, args, waiter)
            d = self.__dict__.get("_direct")
            endpoint = m.extra.decode(errors="replace") if m.extra else ""
            unreachable = self.__dict__.get("_unreachable", ("", 0.0))
            if endpoint and self.__dict__.get("session") and m.cmd == RESPONSE and (
                    d is None or d.endpoint != endpoint) and (
                    unreachable[0] != endpoint or time.monotonic() > unreachable[1]):
                # The broker reserved a worker that serves this session directly: the next
                # requests go straight to it (two hops fewer), and back through the broker
                # whenever that fails.
                self._drop_direct()
                try:
                    keys = (self._curve.public_key, self._curve.secret_key) if self._curve else None
                    self.__dict__["_direct"] = open_direct(endpoint, keys, self.spin_us)
                except Exception as e:
                    # A socket this host does not have (a worker in a container, on another
                    # host): not tried again for a while, every answer names it.
                    log.debug("no direct path to %r: %s", endpoint, e)
                    self.__dict__["_unreachable"] = (endpoint, time.monotonic() + 10.0)
        is_error, payload = expect_reply(m)
        reply = protocol.decode_response(payload, n_atoms)
        if not reply.success:
            if is_error:  # the broker's own error
                raise broker_error(reply.error or "")
            reply.raise_for_error()
        return reply

    # ------------------------------------------------------------------ many structures

    def calculate_many(self, atoms_list: Iterable[Any], properties: Optional[Sequence[str]] = None,
                       **kwargs: Any) -> List[Dict[str, Any]]:
        """:func:`aserpc.calculate_many` with this calculator's name, broker and settings."""
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("retries", self.retries)
        kwargs.setdefault("typed_results", self.typed_results)
        kwargs.setdefault("send_info", self.send_info)
        if self._curve is not None:
            kwargs.setdefault("curve_server_key", self._curve.server_key)
            kwargs.setdefault("curve_secret", (self._curve.public_key, self._curve.secret_key))
        return calculate_many(atoms_list, self.calc_name, properties, broker=self.broker, **kwargs)


# ---------------------------------------------------------------------- helpers


def _curve_hint(curve: Any) -> str:
    if curve is None:
        return ""
    return ("; with CURVE, a broker that does not list this client's key, or whose public key "
            "is not the one given, never answers")


def _control(cmd: bytes, args: Sequence[bytes], broker: Optional[str], timeout: int,
             curve_server_key: Any = None, curve_secret: Any = None) -> Any:
    """One control message on a short-lived socket; returns the decoded RESPONSE map."""
    address = _broker(broker)
    curve = resolve_curve(address, curve_server_key, curve_secret)
    conn = Connection(address, curve)
    try:
        try:
            m = conn.exchange(cmd, args, Waiter(timeout / 1000))
        except RequestTimeoutError:
            raise RequestTimeoutError(f"Timeout ({timeout}ms)" + _curve_hint(curve) + ipc_hint(address)) from None
        if m.cmd == b"\x0a":
            try:
                msg = protocol.decode_response(m.payload).error or "Unknown error"
            except ProtocolError:
                msg = repr(m.payload[:80])
            raise broker_error(msg)
        if m.cmd != b"\x05":
            raise ProtocolError(f"Unexpected response: {m.cmd!r}")
        try:
            return msgpack.unpackb(m.payload, raw=False, strict_map_key=False)
        except Exception as e:
            raise ProtocolError(f"Unexpected response: {e}") from None
    finally:
        conn.close()


def list_calculators(broker: Optional[str] = None, timeout: int = 5000, *,
                     curve_server_key: Any = None, curve_secret: Any = None) -> Dict[str, int]:
    """``{calculator: number of workers}``; calculators a manager can spawn appear with 0.

    ``curve_server_key`` and ``curve_secret``: as for :class:`RemoteCalculator` (all helpers).
    """
    return dict(_control(LIST, [], broker, timeout, curve_server_key, curve_secret))


def broker_status(broker: Optional[str] = None, timeout: int = 5000, *,
                  curve_server_key: Any = None, curve_secret: Any = None) -> Dict[str, Any]:
    """The broker's STATUS map: ``workers`` ({calc: {total, idle, busy}}), ``pending_requests``,
    ``manager`` and, from aserpc's broker, ``broker`` (uptime and counters)."""
    return dict(_control(STATUS, [], broker, timeout, curve_server_key, curve_secret))


def shutdown_workers(calc_name: Optional[str] = None, broker: Optional[str] = None,
                     timeout: int = 5000, *, curve_server_key: Any = None,
                     curve_secret: Any = None) -> int:
    """Tell the workers of ``calc_name`` to stop (``None``: of every calculator); returns how many.

    A broker with CURVE authentication accepts this only from an admin key; any other key gets
    a :class:`~aserpc.errors.BrokerError` ("Permission denied: ...").
    """
    keys = (curve_server_key, curve_secret)
    if calc_name is not None:
        return int(_control(WORKER_SHUTDOWN, [calc_name.encode()], broker, timeout, *keys).get("shutdown_count", 0))
    total = 0
    for name in _control(STATUS, [], broker, timeout, *keys).get("workers", {}):
        total += int(_control(WORKER_SHUTDOWN, [name.encode()], broker, timeout, *keys).get("shutdown_count", 0))
    return total


def shutdown_broker(broker: Optional[str] = None, timeout: int = 5000, *,
                    curve_server_key: Any = None, curve_secret: Any = None) -> None:
    """Stop the broker (aserpc's broker must run with ``--allow-shutdown``, and with CURVE be
    asked by an admin key; a 0.1.3 broker stops without answering, which ends in a
    TimeoutError here)."""
    _control(SHUTDOWN, [], broker, timeout, curve_server_key, curve_secret)
