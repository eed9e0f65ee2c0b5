"""Many structures at once: requests in flight together, results in input order.

With aserpc's broker, one DEALER socket carries every request; each carries a correlation
frame that the broker echoes with its reply, and the broker's queue keeps every worker of the
calculator busy. A broker that does not echo the frame (aserpc 0.1.3's) is detected by a
STATUS probe, and then each request in flight gets a socket of its own instead.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional, Sequence, Tuple

import zmq

from . import protocol
from ._transport import Connection, Message, Waiter, ipc_hint, new_corr, parse
from ._request import _broker, atoms_extension, backoff_delay, default_properties, encode_atoms
from .config import load_config
from .curve import resolve_curve
from .constants import ERROR, PROGRESS, REQUEST, RESPONSE, STATUS
from .errors import AserpcError, InvalidInputError, ProtocolError, RequestTimeoutError, broker_error

__all__ = ["calculate_many"]

log = logging.getLogger("aserpc.client")


class _Item:
    __slots__ = ("index", "lane", "corr", "waiter")

    def __init__(self, index: int, lane: int, corr: Optional[bytes], waiter: Waiter) -> None:
        self.index, self.lane, self.corr, self.waiter = index, lane, corr, waiter


def _progress_bar(total: int, desc: str, enabled: Optional[bool]) -> Any:
    if enabled is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if enabled:
            log.warning("progress_bar=True but tqdm is not installed")
        return None
    return tqdm(total=total, desc=desc, unit="structure")


def calculate_many(atoms_list: Iterable[Any], calc_name: str, properties: Optional[Sequence[str]] = None, *,
                   broker: Optional[str] = None, timeout: Optional[int] = None,
                   compute_timeout: Optional[float] = None, max_in_flight: Optional[int] = None,
                   retries: int = 0, progress_bar: Optional[bool] = None, return_exceptions: bool = False,
                   typed_results: bool = True, send_info: bool = True, curve_server_key: Any = None,
                   curve_secret: Any = None) -> List[Dict[str, Any]]:
    """Compute many structures with every worker of ``calc_name`` busy; results in input order.

    Parameters
    ----------
    atoms_list:
        The structures (``ase.Atoms``); they are not modified.
    calc_name, broker, timeout, compute_timeout, retries, typed_results, send_info, curve_server_key, curve_secret:
        As for :class:`~aserpc.RemoteCalculator`; ``timeout`` and ``compute_timeout`` apply
        to each structure, ``retries`` per structure.
    properties:
        What to compute (default: energy and forces, and stress for 3D-periodic structures).
    max_in_flight:
        Requests outstanding at once (default: twice what the calculator's workers can hold,
        at least 2: one job per worker, a batching worker's batch size), so a worker finds its
        next job (or batch) waiting at the broker the moment it answers.
    progress_bar:
        Show a tqdm bar (default: when tqdm is installed).
    return_exceptions:
        Put the exception of a failed structure in its place instead of raising the first.

    Returns
    -------
    list of dict
        One results dict per structure (``{"energy": float, "forces": (N, 3) array, ...}``).
    """
    atoms_list = list(atoms_list)
    n = len(atoms_list)
    if n == 0:
        return []
    address = _broker(broker)
    curve = resolve_curve(address, curve_server_key, curve_secret)
    cfg = load_config()
    timeout_ms = int(timeout) if timeout is not None else cfg.client_timeout_ms
    timeout_s = timeout_ms / 1000
    compute_s = None if compute_timeout is None else compute_timeout / 1000
    retries = max(0, int(retries))

    lanes = [Connection(address, curve)]
    try:
        # The probe: how many jobs can the calculator's workers hold at once (one each, or a
        # batching worker's capacity), and does the broker echo correlation frames?
        try:
            m = lanes[0].exchange(STATUS, [], Waiter(min(timeout_s, 5.0)))
        except RequestTimeoutError:
            raise RequestTimeoutError(f"Timeout ({min(timeout_ms, 5000)}ms)" + ipc_hint(address)) from None
        echo = m.corr is not None
        slots = 0
        if m.cmd == RESPONSE:
            try:
                w = protocol.msgpack.unpackb(m.payload, raw=False).get("workers", {}).get(calc_name) or {}
                slots = int(w.get("capacity", w.get("total", 0)))
            except Exception:
                slots = 0
        if max_in_flight is None:
            max_in_flight = max(2, 2 * slots)
        max_in_flight = max(1, min(int(max_in_flight), n))
        if not echo:
            log.info("broker does not echo correlation frames; using %d sockets", max_in_flight)
            lanes += [Connection(address, curve) for _ in range(max_in_flight - 1)]
        return _run(atoms_list, calc_name, properties, lanes, echo, max_in_flight, timeout_s, compute_s,
                    retries, progress_bar, return_exceptions, typed_results, send_info,
                    cfg.max_message_size)
    finally:
        for lane in lanes:
            lane.close()


def _run(atoms_list: List[Any], calc_name: str, properties: Optional[Sequence[str]], lanes: List[Connection],
         echo: bool, max_in_flight: int, timeout_s: float, compute_s: Optional[float], retries: int,
         progress_bar: Optional[bool], return_exceptions: bool, typed_results: bool,
         send_info: bool, max_size: int) -> List[Dict[str, Any]]:
    n = len(atoms_list)
    name = calc_name.encode()
    payloads: List[Optional[bytes]] = [None] * n
    results: List[Any] = [None] * n
    attempts = [0] * n
    todo: Deque[int] = deque(range(n))
    delayed: List[Tuple[float, int]] = []  # (ready time, index): retries waiting out their backoff
    inflight: Dict[Tuple[int, Optional[bytes]], _Item] = {}
    free = list(range(len(lanes)))[::-1]  # lanes without a request (only used when not echo)
    done = 0
    bar = _progress_bar(n, calc_name, progress_bar)

    def payload(i: int) -> bytes:
        p = payloads[i]
        if p is None:
            a = atoms_list[i]
            props = list(properties) if properties else default_properties(a)
            ext = atoms_extension(a) if send_info else None
            info, arrays = ext if ext else (None, None)
            p = encode_atoms(a, props, info, arrays, typed_results, None, max_size)
            payloads[i] = p
        return p

    def send(i: int) -> None:
        nonlocal done
        try:
            body = payload(i)
        except InvalidInputError as e:  # refused here, never sent
            if not return_exceptions:
                raise
            results[i] = e
            done += 1
            if bar is not None:
                bar.update(1)
            return
        lane = 0 if echo else free.pop()
        corr = new_corr()
        attempts[i] += 1
        lanes[lane].send(REQUEST, [name, body], corr, timeout_s)
        inflight[(lane, corr if echo else None)] = _Item(i, lane, corr, Waiter(timeout_s, compute_s))

    def finish(item: _Item, result: Any) -> None:
        nonlocal done
        if not echo:
            free.append(item.lane)
        if isinstance(result, AserpcError) and result.retryable and attempts[item.index] <= retries:
            delay = backoff_delay(attempts[item.index] - 1)
            log.warning("structure %d: attempt %d/%d failed: %s, retrying in %.2fs", item.index,
                        attempts[item.index], retries + 1, result, delay)
            heapq.heappush(delayed, (time.monotonic() + delay, item.index))
            return
        if isinstance(result, Exception) and not return_exceptions:
            raise result
        results[item.index] = result
        done += 1
        if bar is not None:
            bar.update(1)

    def handle(lane: int, m: Message) -> None:
        key = (lane, m.corr if echo else None)
        item = inflight.get(key)
        if item is None or (echo and m.corr is None):
            return  # a late reply of an abandoned attempt
        if m.cmd == PROGRESS:
            item.waiter.progress(m.progress_body())
            return
        del inflight[key]
        result: Any
        try:
            if m.cmd not in (RESPONSE, ERROR):
                raise ProtocolError(f"Unexpected response type: {m.cmd!r}")
            reply = protocol.decode_response(m.payload, len(atoms_list[item.index]))
            if not reply.success:
                if m.cmd == ERROR:
                    raise broker_error(reply.error or "")
                reply.raise_for_error()
            result = reply.results
        except AserpcError as e:
            result = e
        finish(item, result)

    try:
        poller: Optional[zmq.Poller] = None
        while done < n:
            now = time.monotonic()
            while delayed and delayed[0][0] <= now:
                todo.appendleft(heapq.heappop(delayed)[1])
            while todo and len(inflight) < max_in_flight:
                send(todo.popleft())
            if poller is None:
                poller = zmq.Poller()
                for lane in lanes:
                    poller.register(lane.socket, zmq.POLLIN)
            wake = min([it.waiter.deadline() for it in inflight.values()] + [d[0] for d in delayed[:1]],
                       default=now + 1.0)
            events = dict(poller.poll(max(0, int((wake - time.monotonic()) * 1000 + 0.999))))
            for li, lane in enumerate(lanes):
                if lane.socket not in events:
                    continue
                while True:
                    try:
                        frames = lane.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        m = parse(frames)
                    except ProtocolError:
                        continue
                    handle(li, m)
            now = time.monotonic()
            for key, item in list(inflight.items()):
                if item.waiter.deadline() <= now:
                    del inflight[key]
                    if not echo:  # Lazy Pirate: the late reply must not reach the next request
                        lanes[item.lane].reset()
                        poller = None
                    finish(item, item.waiter.error(now))
    finally:
        if bar is not None:
            bar.close()
    return results
