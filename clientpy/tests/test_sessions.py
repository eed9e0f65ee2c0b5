"""Sessions (issue 20): ``RemoteCalculator(session=True)`` reserves the worker that serves its
first request until close(), its idle timeout or the worker's loss; other clients get the other
workers or wait. ``WarmStart`` (tests/calculators.py) counts 5 SCF iterations when its worker's
previous structure was this one's predecessor, 20 otherwise, and reports its worker's pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from ase.build import molecule

import procs
from aserpc import RemoteCalculator, broker_status

pytestmark = pytest.mark.skipif(procs.WORKER_KIND != "ours", reason="sessions are aserpc's broker's")


@pytest.fixture
def two_workers(broker):
    broker.worker("warm", registry=True)
    broker.worker("warm", registry=True)
    return broker


def burst(frontend, n=2, offset=9.0):
    """Another client's n concurrent requests (structures far from the MD's): each a new
    calculator, as a pool of workers would send."""
    errors = []

    def one(k):
        try:
            a = molecule("H2O")
            a.positions += offset + k
            a.calc = RemoteCalculator("warm", broker=frontend, affinity=False)
            a.get_potential_energy()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def md_with_neighbours(frontend, steps=6, **kw):
    """An MD-like loop of one calculator, with another client's burst between its steps."""
    a = molecule("H2O")
    a.calc = RemoteCalculator("warm", broker=frontend, **kw)
    iters, pids = [], []
    for _ in range(steps):
        a.positions[0, 0] += 0.01
        a.get_potential_energy()
        iters.append(int(a.calc.results["scf_iterations"]))
        pids.append(int(a.calc.results["pid"]))
        burst(frontend)
    return a.calc, iters, pids


def sessions(frontend):
    return broker_status(frontend).get("sessions") or []


def test_session_keeps_its_worker_from_other_clients(two_workers):
    b = two_workers
    calc, iters, pids = md_with_neighbours(b.frontend, session=True)
    assert len(set(pids)) == 1 and iters == [20] + [5] * 5, (iters, pids)
    # The first request reserved the worker through the broker; the others went straight to it.
    assert calc.direct_round_trips == 5 and calc.round_trips == 6, (calc.direct_round_trips, calc.round_trips)
    (s,) = sessions(b.frontend)
    assert s["calc"] == "warm" and s["pid"] == pids[0] and s["served"] >= 1, s
    out = subprocess.run([b.bin or procs.aserpc_bin(), "status", "--broker", b.frontend], capture_output=True, text=True, timeout=30)
    assert "Session" in out.stdout and str(pids[0]) in out.stdout, out.stdout
    calc.close()
    deadline = time.monotonic() + 5
    while sessions(b.frontend) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(b.frontend) == [], "close() did not end the session"
    # Affinity alone cannot keep the worker: the burst's second request takes it while it is
    # idle, and the MD's next step starts cold there (the test can fail).
    _, iters, pids = md_with_neighbours(b.frontend)
    assert iters.count(20) > 1, (iters, pids)


def test_session_ends_when_its_client_dies(two_workers, tmp_path):
    b = two_workers
    script = textwrap.dedent(f"""
        import os
        from ase.build import molecule
        from aserpc import RemoteCalculator
        a = molecule("H2O")
        a.calc = RemoteCalculator("warm", broker={b.frontend!r}, session=True, session_timeout=1.0)
        a.get_potential_energy()
        os._exit(0)  # no close(): as a killed client
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    assert len(sessions(b.frontend)) == 1
    t0 = time.monotonic()
    while sessions(b.frontend) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    took = time.monotonic() - t0
    assert sessions(b.frontend) == [], "the dead client's session outlived its timeout"
    assert took < 3, took
    # Both workers serve everyone again.
    pids = set()
    for k in range(6):
        a = molecule("H2O")
        a.calc = RemoteCalculator("warm", broker=b.frontend, affinity=False)
        a.get_potential_energy()
        pids.add(a.calc.results["pid"])
    assert len(pids) == 2, pids


def test_session_survives_its_workers_death(two_workers):
    b = two_workers
    a = molecule("H2O")
    a.calc = RemoteCalculator("warm", broker=b.frontend, session=True)
    iters, pids = [], []
    for step in range(6):
        a.positions[0, 0] += 0.01
        a.get_potential_energy()
        iters.append(int(a.calc.results["scf_iterations"]))
        pids.append(int(a.calc.results["pid"]))
        if step == 2:
            os.kill(pids[-1], signal.SIGKILL)
            time.sleep(0.3)
    # The other worker took over (cold once: its state starts afresh), then kept it.
    assert pids[:3] == [pids[0]] * 3 and pids[3:] == [pids[3]] * 3 and pids[3] != pids[0], pids
    assert iters == [20, 5, 5, 20, 5, 5], iters
    (s,) = sessions(b.frontend)
    assert s["pid"] == pids[3], s
    a.calc.close()


def test_worker_killed_during_a_direct_request(broker):
    """The session's worker dies while it computes a direct request: its socket closes, the
    client sends the request through the broker at once, another worker answers it right."""
    from ase.calculators.lj import LennardJones

    broker.worker("slow1500", registry=True)
    broker.worker("slow1500", registry=True)
    a = molecule("H2O")
    a.calc = RemoteCalculator("slow1500", broker=broker.frontend, session=True, timeout=5000)
    a.get_potential_energy()  # reserves a worker, through the broker
    (s,) = sessions(broker.frontend)
    # The next request goes to it on the unix socket the broker announced.
    assert a.calc.__dict__["_direct"].endpoint.startswith("unix://"), a.calc.__dict__.get("_direct")
    a.positions[0, 0] += 0.01
    killer = threading.Timer(0.5, os.kill, (s["pid"], signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    e = a.get_potential_energy()
    took = time.monotonic() - t0
    killer.join()
    ref = molecule("H2O")
    ref.positions[0, 0] += 0.01
    ref.calc = LennardJones()
    assert e == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    # Sent directly, lost with its worker, answered through the broker by the other one: the
    # 0.5 s to the kill and one more calculation, not a timeout.
    assert a.calc.direct_round_trips == 0 and a.calc.round_trips == 2, (a.calc.direct_round_trips, a.calc.round_trips)
    assert took < 3.5, took
    (s2,) = sessions(broker.frontend)
    assert s2["pid"] != s["pid"], (s, s2)
    a.calc.close()


def test_unreachable_direct_socket_goes_through_the_broker(broker, monkeypatch):
    """The worker's announced unix socket is not on this host (here: its path removed, as for a
    worker in a container): every request goes through the broker, right, and the client does
    not try the socket again on every answer."""
    from ase.calculators.lj import LennardJones

    broker.worker("LJ")
    a = molecule("H2O")
    a.calc = RemoteCalculator("LJ", broker=broker.frontend, session=True)
    a.get_potential_energy()
    (s,) = sessions(broker.frontend)
    endpoint = a.calc.__dict__["_direct"].endpoint
    path = endpoint[len("unix://"):]
    assert os.path.basename(path) == f"w-{s['pid']}.sock", endpoint
    a.calc._drop_direct()
    os.unlink(path)
    import aserpc.client

    tries = []
    real = aserpc.client.open_direct
    monkeypatch.setattr(aserpc.client, "open_direct", lambda e, *x: tries.append(e) or real(e, *x))
    ref = molecule("H2O")
    ref.calc = LennardJones()
    for _ in range(4):
        a.positions[0, 0] += 0.01
        ref.positions[0, 0] += 0.01
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    assert a.calc.direct_round_trips == 0 and a.calc.__dict__.get("_direct") is None
    assert a.calc.__dict__["_unreachable"][0] == endpoint and tries == [endpoint], tries
    a.calc.close()


def step(a):
    a.positions[0, 0] += 0.01
    a.get_potential_energy()
    return int(a.calc.results["scf_iterations"]), int(a.calc.results["pid"])


def test_direct_path_falls_back_when_the_session_ends(two_workers):
    """The broker ends an idle session and tells its worker; the client, not knowing, goes
    direct, is refused, and goes through the broker, which reserves a worker again."""
    b = two_workers
    a = molecule("H2O")
    a.calc = RemoteCalculator("warm", broker=b.frontend, session=True, session_timeout=0.5)
    first = [step(a) for _ in range(3)]
    assert a.calc.direct_round_trips == 2, a.calc.direct_round_trips
    t0 = time.monotonic()
    while sessions(b.frontend) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert sessions(b.frontend) == []
    later = [step(a) for _ in range(3)]
    assert a.calc.round_trips == 6 and a.calc.direct_round_trips == 4, (a.calc.round_trips, a.calc.direct_round_trips)
    assert len({p for _, p in later}) == 1 and [i for i, _ in later][1:] == [5, 5], later
    a.calc.close()


def test_direct_path_survives_a_broker_restart(two_workers):
    b = two_workers
    a = molecule("H2O")
    a.calc = RemoteCalculator("warm", broker=b.frontend, session=True, retries=2)
    [step(a) for _ in range(2)]
    b.proc.stop(signal.SIGKILL)
    b.start(timeout=1.0)
    b.wait_count("warm", 2, deadline=20)
    # The restarted broker knows no session; the workers dropped theirs when they registered
    # again, so the direct request is refused and goes through the new broker.
    got = [step(a) for _ in range(3)]
    assert len({p for _, p in got}) == 1, got
    assert len(sessions(b.frontend)) == 1
    a.calc.close()


def test_long_direct_calculation_does_not_time_out(broker):
    """A direct request computing longer than the client's timeout: the worker reports progress
    to the client as the broker would."""
    broker.worker("slow1500", registry=True)
    a = molecule("H2O")
    a.calc = RemoteCalculator("slow1500", broker=broker.frontend, session=True, timeout=1000)
    for _ in range(2):
        a.positions[0, 0] += 0.01
        a.get_potential_energy()
    assert a.calc.direct_round_trips == 1, a.calc.direct_round_trips
    a.calc.close()


def test_forked_child_does_not_take_its_parents_session(two_workers):
    b = two_workers
    a = molecule("H2O")
    a.calc = RemoteCalculator("warm", broker=b.frontend, session=True)
    first = step(a)
    pid = os.fork()
    if pid == 0:  # the child: its own client, which closes what it opened
        code = 1
        try:
            c = a.copy()
            c.calc = a.calc
            c.positions += 9.0
            c.get_potential_energy()
            c.calc.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    later = [step(a) for _ in range(2)]
    assert [p for _, p in later] == [first[1]] * 2 and [i for i, _ in later] == [5, 5], (first, later)
    a.calc.close()


def test_session_on_reference_workers(broker):
    """aserpc 0.1.3's workers can be reserved (the reservation is the broker's); they have no
    direct path, so every request goes through the broker, and results stay right."""
    from ase.calculators.lj import LennardJones

    try:
        procs.reference_venv()
    except procs.Unavailable as e:
        pytest.skip(str(e))
    broker.worker("LJ", kind="reference")
    broker.worker("LJ", kind="reference")
    a, ref = molecule("H2O"), molecule("H2O")
    a.calc = RemoteCalculator("LJ", broker=broker.frontend, session=True)
    ref.calc = LennardJones()
    for _ in range(3):
        a.positions[0, 0] += 0.01
        ref.positions[0, 0] += 0.01
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-12)
    assert a.calc.direct_round_trips == 0
    st = broker_status(broker.frontend)
    (s,) = st["sessions"]
    assert s["served"] == 3 and st["workers"]["LJ"]["reserved"] == 1, st
    a.calc.close()
    t0 = time.monotonic()
    while sessions(broker.frontend) and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    assert sessions(broker.frontend) == []


def test_reserved_workers_in_the_metrics(aserpc_bin):
    import socket
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    b = procs.Broker(binary=aserpc_bin).start(timeout=1.0, extra=["--metrics", f"127.0.0.1:{port}"])
    try:
        b.worker("warm", registry=True)
        b.worker("warm", registry=True)
        a = molecule("H2O")
        a.calc = RemoteCalculator("warm", broker=b.frontend, session=True)
        step(a)
        want = 'aserpc_workers{calc="warm",state="reserved"} 1'
        t0, text = time.monotonic(), ""
        while want not in text and time.monotonic() - t0 < 10:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            time.sleep(0.2)
        assert want in text and 'aserpc_workers{calc="warm",state="idle"} 1' in text, text[:2000]
        a.calc.close()
    finally:
        b.close()
