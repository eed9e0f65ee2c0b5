"""The bad-input catalogue of docs/reliability.md, row by row: what a user sees for each kind of bad input.

Real broker and worker processes on ipc sockets. Each row's message is asserted as that page
quotes it, and each test also shows the broker (and worker) still serving afterwards.
"""

from __future__ import annotations

import re
import time

import msgpack
import numpy as np
import pytest
import zmq
from ase import Atoms
from ase.build import bulk, molecule

from aserpc import (InvalidInputError, NoWorkersError, RemoteCalculator, RemoteError,
                    RequestTimeoutError, broker_status, calculate_many)

import procs

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


# ---------------------------------------------------------------- results that break ASE's conventions


@pytest.fixture(scope="module")
def broken(aserpc_bin):
    """A broker with a worker serving tests/calculators.py's Broken (and one serving LJ)."""
    b = procs.Broker(binary=aserpc_bin).start(timeout=2.0)
    b.worker("LJ")
    w = b.worker("broken", registry=True)
    b.broken_worker = w
    yield b
    b.close()


def _argon(n: int, periodic: bool = False) -> Atoms:
    a = Atoms("Ar" * n, positions=[(3.0 * i, 0.0, 0.0) for i in range(n)])
    if periodic:
        a.cell, a.pbc = [3.0 * n, 10.0, 10.0], True
    return a


@pytest.mark.parametrize("n,prop,expect", [
    (1, "energy", "returned str 'abc'; ASE expects a real scalar"),
    (2, "forces", "shape (2, 2); ASE expects shape (2, 3) (2 atoms)"),
    (3, "forces", "shape (4, 3); ASE expects shape (3, 3) (3 atoms)"),
    (4, "forces", "returned a ragged sequence; ASE expects a real array of shape (4, 3)"),
    (5, "forces", "dtype complex128 and shape (5, 3); ASE expects a real array"),
    (6, "energy", "ndarray of dtype float64 and shape (1,); ASE expects a real scalar"),
    (7, "forces", "ASE expects a real array of shape (7, 3) (7 atoms)"),
    (8, "stress", "shape (5,); ASE expects shape (6,) or (3, 3)"),
])
def test_invalid_result_is_an_error(broken, ours, n, prop, expect):
    a = _argon(n, periodic=(prop == "stress"))
    a.calc = RemoteCalculator("broken", broker=broken.frontend, timeout=10000)
    with pytest.raises(RemoteError) as ei:
        a.get_potential_energy()
    e = ei.value
    assert e.remote_type == "aserpc.InvalidResult", (e.remote_type, str(e))
    assert re.match(rf"{prop}: \S*Broken returned ", str(e)), str(e)  # property, then the calculator's class
    assert expect in str(e), str(e)
    # The worker keeps serving: good results from the same calculator, and LJ.
    good = _argon(10)
    good.calc = RemoteCalculator("broken", broker=broken.frontend, timeout=10000)
    assert good.get_potential_energy() == 10.0
    assert good.get_forces().shape == (10, 3)
    still_serves(broken)


def test_invalid_result_logged_once_per_property(broken, ours):
    for _ in range(3):
        a = _argon(3)
        a.calc = RemoteCalculator("broken", broker=broken.frontend, timeout=10000)
        with pytest.raises(RemoteError, match="forces: "):
            a.get_forces()
    log = broken.broken_worker.output()
    warns = [line for line in log.splitlines() if "invalid result" in line and "property=forces" in line]
    assert len([w for w in warns if "level=WARN" in w]) == 1, "\n".join(warns)
    assert len([w for w in warns if "level=DEBUG" in w]) >= 2, "\n".join(warns)


def test_stress_3x3_is_sent_as_voigt(broken, ours):
    from ase.stress import full_3x3_to_voigt_6_stress

    a = _argon(9, periodic=True)
    a.calc = RemoteCalculator("broken", broker=broken.frontend, timeout=10000)
    s = np.arange(9, dtype=float).reshape(3, 3)
    np.testing.assert_array_equal(a.get_stress(), full_3x3_to_voigt_6_stress(s + s.T))


def _reply(results: dict, ext: dict = None) -> bytes:
    return msgpack.packb([1, True, results, None] + ([ext] if ext else []), use_bin_type=True)


@pytest.mark.parametrize("results,n,prop", [
    ({"energy": "abc"}, 3, "energy"),
    ({"energy": 1.0, "forces": np.zeros(4).tobytes()}, 3, "forces"),        # 0.1.3: flat float64
    ({"energy": 1.0, "stress": np.zeros(5).tobytes()}, 3, "stress"),
    ({"energy": [1.0, 2.0]}, 3, "energy"),
])
def test_client_checks_any_workers_results(results, n, prop):
    """aserpc 0.1.3's worker checks nothing: the client holds its replies to the same contract."""
    from aserpc import protocol

    reply = protocol.decode_response(_reply(results), n)
    assert not reply.success
    assert reply.error_type == "aserpc.InvalidResult"
    assert reply.error.startswith(f"{prop}: the worker's calculator returned"), reply.error
    with pytest.raises(RemoteError) as ei:
        reply.raise_for_error()
    assert ei.value.remote_type == "aserpc.InvalidResult"


def test_client_shapes_old_workers_arrays():
    """0.1.3 sends every array flat: the standard ones get their shapes back, then pass the check."""
    from aserpc import protocol

    s = np.arange(9.0).reshape(3, 3)
    reply = protocol.decode_response(_reply({"energy": 1.0, "forces": np.zeros(6).tobytes(),
                                             "stress": s.tobytes(), "stresses": np.zeros(12).tobytes()}), 2)
    assert reply.success, reply.error
    assert reply.results["forces"].shape == (2, 3)
    assert reply.results["stress"].shape == (6,)
    assert reply.results["stresses"].shape == (2, 6)
