"""The README's bad-input catalogue, row by row: what a user sees for each kind of bad input.

Real broker and worker processes on ipc sockets. Each row's message is asserted as the README
quotes it, and each test also shows the broker (and worker) still serving afterwards.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq
from ase import Atoms
from ase.build import bulk, molecule

from aserpc import (InvalidInputError, NoWorkersError, RemoteCalculator, RemoteError,
                    RequestTimeoutError, broker_status, calculate_many)

REQUEST = b"\x04"


def raw_request(frontend: str, calc: str, body: bytes, timeout_ms: int = 10000) -> list:
    """What any client (aserpc 0.1.3's, another language's) may send: [REQUEST, calc, body]."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.connect(frontend)
    try:
        s.send_multipart([REQUEST, calc.encode(), body])
        return s.recv_multipart()
    finally:
        s.close()


def body(version=1, numbers=(1, 1), positions=(0, 0, 0, 0, 0, 0.74), cell=(0,) * 9, pbc=b"\0\0\0"):
    return msgpack.packb([version, np.asarray(numbers, "<i4").tobytes(),
                          np.asarray(positions, "<f8").tobytes(), np.asarray(cell, "<f8").tobytes(),
                          pbc, ["energy", "forces"]], use_bin_type=True)


def error_of(reply: list) -> tuple:
    """(command byte, error text, remote type) of a failed reply."""
    msg = msgpack.unpackb(reply[1], raw=False)
    assert msg[0] == 1 and msg[1] is False, msg
    ext = msg[4] if len(msg) > 4 else {}
    return reply[0], msg[3], ext.get("error_type")


def still_serves(b, calc: str = "LJ") -> None:
    a = molecule("H2O")
    a.calc = RemoteCalculator(calc, broker=b.frontend, timeout=10000)
    assert np.isfinite(a.get_potential_energy())


@pytest.fixture
def lj(lj_broker):
    return lj_broker


def test_unknown_calculator(lj):
    a = molecule("H2O")
    a.calc = RemoteCalculator("no_such_calc", broker=lj.frontend, timeout=5000)
    with pytest.raises(NoWorkersError, match="No workers available for calculator 'no_such_calc'"):
        a.get_potential_energy()
    still_serves(lj)


@pytest.mark.parametrize("where", ["position", "cell"])
def test_nan_or_inf_is_refused_before_sending(lj, where):
    a = bulk("Cu", cubic=True) if where == "cell" else molecule("H2O")
    if where == "cell":
        c = a.cell.array.copy()
        c[1, 2] = np.inf
        a.set_cell(c)
        want = "invalid structure: cell vector 1 is +Inf in component 2 (must be finite)"
    else:
        a.positions[2, 0] = np.nan
        want = "invalid structure: position of atom 2 is NaN (must be finite)"
    calc = RemoteCalculator("LJ", broker=lj.frontend, timeout=5000)
    a.calc = calc
    with pytest.raises(InvalidInputError) as e:
        a.get_potential_energy()
    assert str(e.value) == want
    assert isinstance(e.value, ValueError)
    assert calc.round_trips == 0, "refused without a round trip"


def test_zero_atoms_is_refused(lj):
    a = Atoms()
    calc = RemoteCalculator("LJ", broker=lj.frontend, timeout=5000)
    a.calc = calc
    with pytest.raises(InvalidInputError, match="^invalid structure: no atoms$"):
        a.get_potential_energy()
    assert calc.round_trips == 0
    # In a batch, the bad structure's slot holds its error; the others are computed.
    out = calculate_many([molecule("H2O"), Atoms()], "LJ", broker=lj.frontend, return_exceptions=True)
    assert np.isfinite(out[0]["energy"]) and isinstance(out[1], InvalidInputError)


@pytest.mark.parametrize("case,request_body,want,rtype", [
    # A NaN atom is dropped by LJ's neighbour list: a finite, wrong energy unless refused.
    ("nan position", body(positions=(0, 0, 0, np.nan, 0, 0.74)),
     "invalid structure: position of atom 1 is NaN (must be finite)", "aserpc.InvalidRequest"),
    ("zero atoms", body(numbers=(), positions=()), "invalid structure: no atoms", "aserpc.InvalidRequest"),
    ("atomic number", body(numbers=(1, 200)),
     "invalid structure: atom 1 has atomic number 200 (want 0–118)", "aserpc.InvalidRequest"),
    ("mismatched sizes", body(positions=(0, 0, 0, 0, 0)),
     "decode request: wire: malformed msgpack: positions has 40 bytes, want 48 for 2 atoms (N×3 float64)",
     "aserpc.InvalidRequest"),
    ("wrong protocol version", body(version=2), "Protocol version mismatch: got 2, expected 1", "ValueError"),
    ("not msgpack", b"\xc1garbage",
     "decode request: wire: malformed msgpack at byte 0: expected array, got type byte 0xc1",
     "aserpc.InvalidRequest"),
])
def test_worker_refuses_bad_requests_from_any_client(lj, ours, case, request_body, want, rtype):
    """Clients that do not check (0.1.3's, hand-written ones) get an error RESPONSE; the
    worker stays up."""
    cmd, text, remote_type = error_of(raw_request(lj.frontend, "LJ", request_body))
    assert (cmd, text, remote_type) == (b"\x05", want, rtype)
    still_serves(lj)


def test_oversized_message(aserpc_bin):
    import procs

    b = procs.Broker(binary=aserpc_bin).start(timeout=2.0, extra=["--max-message-size", "100000"])
    try:
        b.worker("LJ")
        big = Atoms("Cu" * 5000, positions=np.random.default_rng(0).random((5000, 3)) * 50)
        # A client that knows the limit (same config as the broker) refuses at once.
        calc = RemoteCalculator("LJ", broker=b.frontend, timeout=2000, max_message_size=100000)
        big.calc = calc
        with pytest.raises(InvalidInputError, match=r"request of \d+ bytes exceeds max_message_size "
                                                    r"\(100000 bytes\); raise it on the broker"):
            big.get_potential_energy()
        assert calc.round_trips == 0
        # One that does not is disconnected by libzmq and times out; nobody else notices.
        big.calc = RemoteCalculator("LJ", broker=b.frontend, timeout=1500, max_message_size=10**9)
        with pytest.raises(RequestTimeoutError):
            big.get_potential_energy()
        still_serves(b)
        assert b.proc.alive()
    finally:
        b.close()


def test_oversized_response_is_an_error_not_a_lost_worker(broker, ours):
    """A result bigger than the worker's max_message_size would get the worker disconnected
    by the broker; it answers an error instead and keeps serving."""
    broker.worker("LJ", extra_env={"ASERPC_MAX_MESSAGE_SIZE": "4000"})
    a = bulk("Cu", cubic=True).repeat((4, 4, 4))  # 256 atoms: forces alone are 6144 bytes
    a.calc = RemoteCalculator("LJ", broker=broker.frontend, timeout=10000)
    with pytest.raises(RemoteError, match=r"response of \d+ bytes exceeds max_message_size \(4000 bytes\)") as e:
        a.get_potential_energy()
    assert e.value.remote_type == "aserpc.MessageTooLarge"
    still_serves(broker)


def test_client_disappears_mid_request(broker):
    """The worker finishes, the broker drops the reply (counted), and the next client is served."""
    broker.worker("slow1500", registry=True)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(broker.frontend)
    s.send_multipart([REQUEST, b"slow1500", body()])
    time.sleep(0.3)  # dispatched
    s.close()
    before = broker_status(broker.frontend)["broker"]["counters"]["undeliverable"]
    t0 = time.monotonic()
    still_serves(broker, "slow1500")  # waits for the abandoned job, then runs its own
    assert time.monotonic() - t0 < 10
    counters = broker_status(broker.frontend)["broker"]["counters"]
    assert counters["undeliverable"] >= before + 1, counters


def test_slow_client_does_not_hold_up_others(lj):
    """A client that sends many requests and never reads its replies: the broker never blocks
    on it (replies past its queue are dropped and counted); others are served meanwhile."""
    ctx = zmq.Context.instance()
    slow = ctx.socket(zmq.DEALER)
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.connect(lj.frontend)
    try:
        for _ in range(300):
            slow.send_multipart([b"", REQUEST, b"LJ", body()])
        a = molecule("H2O")
        a.calc = RemoteCalculator("LJ", broker=lj.frontend, timeout=20000)
        for i in range(20):
            a.positions[0, 2] += 0.001
            assert np.isfinite(a.get_potential_energy())
        # Now read: what arrived are ordinary replies.
        slow.setsockopt(zmq.RCVTIMEO, 2000)
        got = 0
        try:
            while True:
                frames = slow.recv_multipart()
                assert frames[1] == b"\x05"
                got += 1
        except zmq.Again:
            pass
        assert 1 <= got <= 300
    finally:
        slow.close()
    still_serves(lj)
