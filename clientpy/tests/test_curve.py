"""CurveZMQ through the Python client against a real `aserpc broker` on tcp://127.0.0.1.

Every refusal is shown next to the accepted counterpart; refusals are a 2 s probe or a
1.5 s helper timeout (a refused handshake gives no reply at all).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time

import numpy as np
import pytest
import zmq
import zmq.auth
from ase.build import molecule
from ase.calculators.lj import LennardJones

import procs
from aserpc import (BrokerError, BrokerUnreachableError, ConfigError, RemoteCalculator,
                    RequestTimeoutError, broker_status, list_calculators, shutdown_workers)
from aserpc.curve import resolve_curve


def free_tcp() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def world(aserpc_bin):
    """Keys (ours and one pair made by pyzmq), a CURVE broker on tcp, one LJ worker."""
    if procs.WORKER_KIND != "ours":
        pytest.skip("aserpc 0.1.3's worker has no CURVE")
    d = procs.short_dir()
    keys = os.path.join(d, "keys")
    subprocess.run([aserpc_bin, "keys", "generate", "--dir", keys, "broker", "alice", "gpu1", "ops",
                    "stranger"], check=True, capture_output=True)
    os.makedirs(os.path.join(d, "py"))
    py_pub, py_sec = zmq.auth.create_certificates(os.path.join(d, "py"), "pyclient")
    with open(os.path.join(d, "authorized_keys"), "w") as f:
        f.write("client keys/alice.key\nworker keys/gpu1.key\nadmin keys/ops.key\nclient py/pyclient.key\n")
    k = lambda name: os.path.join(keys, name)  # noqa: E731
    w = {"dir": d, "key": k, "server": k("broker.key"), "py_secret": py_sec}
    w["as"] = lambda name: {"curve_server_key": k("broker.key"), "curve_secret": k(name + ".key_secret")}
    b = procs.Broker(directory=d, binary=aserpc_bin, frontend=free_tcp(), backend=free_tcp(),
                     client_kwargs=w["as"]("ops"))
    b.start(extra=["--curve-secret", k("broker.key_secret"), "--authorized-keys",
                   os.path.join(d, "authorized_keys")])
    b.worker("LJ", extra=["--curve-server-key", k("broker.key"), "--curve-secret", k("gpu1.key_secret")])
    w["broker"] = b
    yield w
    b.close()


def lj_energy(atoms) -> float:
    a = atoms.copy()
    a.calc = LennardJones()
    return a.get_potential_energy()


def test_remote_calculator_with_curve_args(world):
    b = world["broker"]
    atoms = molecule("H2O")
    with RemoteCalculator("LJ", broker=b.frontend, **world["as"]("alice")) as calc:
        atoms.calc = calc
        e = atoms.get_potential_energy()
    ref = molecule("H2O")
    ref.calc = LennardJones()
    assert e == ref.get_potential_energy()
    assert np.array_equal(atoms.get_forces(), ref.get_forces())


def test_remote_calculator_with_curve_from_env(world, monkeypatch):
    """The keys from ASERPC_CURVE_* (0.1.3's signature, nothing new passed)."""
    b = world["broker"]
    monkeypatch.setenv("ASERPC_CURVE_SERVER_KEY", world["server"])
    monkeypatch.setenv("ASERPC_CURVE_SECRET", world["key"]("alice.key_secret"))
    calc = RemoteCalculator("LJ", b.frontend, 5000)
    atoms = molecule("H2O")
    atoms.calc = calc
    assert atoms.get_potential_energy() == lj_energy(molecule("H2O"))
    calc.close()
    # ...and without them, the same call is a plaintext client, which the broker never answers.
    monkeypatch.delenv("ASERPC_CURVE_SERVER_KEY")
    monkeypatch.delenv("ASERPC_CURVE_SECRET")
    with pytest.raises(BrokerUnreachableError) as e:
        RemoteCalculator("LJ", b.frontend, 5000)
    assert "not reachable" in str(e.value)


def test_pyzmq_certificate_and_key_pair(world):
    """A client certificate made by pyzmq, given as a file and as a (public, secret) pair."""
    b = world["broker"]
    pub, sec = zmq.auth.load_certificate(world["py_secret"])
    for secret in (world["py_secret"], (pub, sec)):
        with RemoteCalculator("LJ", broker=b.frontend, curve_server_key=world["server"],
                              curve_secret=secret) as calc:
            atoms = molecule("H2O")
            atoms.calc = calc
            assert atoms.get_potential_energy() == lj_energy(molecule("H2O"))


def test_unknown_key_rejected(world):
    b = world["broker"]
    with pytest.raises(BrokerUnreachableError) as e:
        RemoteCalculator("LJ", broker=b.frontend, **world["as"]("stranger"))
    assert "never answers" in str(e.value)  # the hint that a CURVE refusal looks like this
    with pytest.raises(RequestTimeoutError):
        list_calculators(b.frontend, timeout=1500, **world["as"]("stranger"))
    assert list_calculators(b.frontend, timeout=1500, **world["as"]("alice")) == {"LJ": 1}


def test_plaintext_rejected(world):
    b = world["broker"]
    with pytest.raises(RequestTimeoutError):
        broker_status(b.frontend, timeout=1500)
    assert broker_status(b.frontend, timeout=1500, **world["as"]("alice"))["workers"]["LJ"]["total"] == 1


def test_shutdown_workers_needs_admin_key(world, aserpc_bin):
    b = world["broker"]
    b.worker("LJ", name="Stop", extra=["--curve-server-key", world["server"],
                                       "--curve-secret", world["key"]("gpu1.key_secret")])
    with pytest.raises(BrokerError) as e:
        shutdown_workers("Stop", b.frontend, **world["as"]("alice"))
    assert "Permission denied" in str(e.value) and "admin key" in str(e.value)
    assert b.count("Stop") == 1
    assert shutdown_workers("Stop", b.frontend, **world["as"]("ops")) == 1
    b.wait_count("Stop", 0)


def test_resolve_curve_rules(tmp_path):
    pair = zmq.curve_keypair()
    # ipc never uses CURVE, whatever is given.
    assert resolve_curve("ipc:///tmp/x/f.ipc", pair[0], pair) is None
    keys = resolve_curve("tcp://127.0.0.1:1", pair[0].decode(), pair)
    assert keys is not None and keys.server_key == pair[0] and keys.secret_key == pair[1]
    with pytest.raises(ConfigError, match="no client certificate"):
        resolve_curve("tcp://127.0.0.1:1", pair[0], None)
    pub_file, _ = zmq.auth.create_certificates(str(tmp_path), "c")
    with pytest.raises(ConfigError, match="no secret-key"):
        resolve_curve("tcp://127.0.0.1:1", pair[0], pub_file)


@pytest.mark.parametrize("same_host", [False, True], ids=["tcp", "unix"])
def test_session_over_curve(world, same_host, tmp_path):
    """A session (issue 20) on a tcp broker with CURVE: the reservation is the broker's, so it
    holds on every transport. The direct path is the worker's own CURVE tcp socket, or, for a
    client on the worker's host (same kernel boot id), the worker's unix socket: here the
    workers of the "tcp" case get a runtime directory open to others, where a worker refuses to
    put its socket, so they announce tcp only."""
    b = world["broker"]
    env = None
    if not same_host:
        (tmp_path / "aserpc").mkdir(mode=0o755)
        os.chmod(tmp_path / "aserpc", 0o755)
        env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    workers = [b.worker("warm", registry=True, extra_env=env,
                        extra=["--curve-server-key", world["server"], "--curve-secret", world["key"]("gpu1.key_secret")])
               for _ in range(2)]
    try:
        _session_over_curve(world, b, same_host)
    finally:
        for w in workers:  # the module's broker outlives this test
            w.stop()
        end = time.monotonic() + 10
        while b.count("warm") and time.monotonic() < end:
            time.sleep(0.05)


def _session_over_curve(world, b, same_host):
    atoms = molecule("H2O")
    with RemoteCalculator("warm", broker=b.frontend, session=True, **world["as"]("alice")) as calc:
        atoms.calc = calc
        got = []
        for _ in range(4):
            atoms.positions[0, 0] += 0.01
            atoms.get_potential_energy()
            got.append((calc.results["scf_iterations"], calc.results["pid"]))
            # another client between the steps takes the other worker, never this one's
            other = molecule("H2O")
            other.positions += 9.0
            other.calc = RemoteCalculator("warm", broker=b.frontend, affinity=False, **world["as"]("alice"))
            other.get_potential_energy()
            assert other.calc.results["pid"] != got[0][1]
        assert [i for i, _ in got] == [20, 5, 5, 5] and len({p for _, p in got}) == 1, got
        # After the first, the requests went straight to the worker: tcp with CURVE, on the
        # worker's own key pair, which only this session's client learnt from the broker; or
        # on this host its unix socket.
        assert calc.direct_round_trips == 3, calc.direct_round_trips
        announced = calc._direct.endpoint.split(" ")
        endpoint, key = announced[:2]
        assert endpoint.startswith("tcp://127.0.0.1:") and len(key) == 40, calc._direct.endpoint
        if same_host:
            from aserpc._transport import boot_id

            assert len(announced) == 4 and announced[2] == boot_id(), announced
            assert calc._direct.address == announced[3] and announced[3].startswith("unix://"), calc._direct.address
        else:
            assert len(announced) == 2 and calc._direct.address == endpoint, calc._direct.endpoint
        (s,) = broker_status(b.frontend, **world["as"]("ops"))["sessions"]
        assert s["pid"] == got[0][1] and s["served"] >= 1, s
        # Knowing the worker's key is not enough: a request without the session's key is refused.
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        pub, sec = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = key.encode(), pub, sec
        sock.connect(endpoint)
        from aserpc._request import encode_atoms

        sock.send_multipart([b"", b"\x04", b"warm", encode_atoms(molecule("H2O"), ["energy"], None, None, True,
                                                                  {"affinity": "intruder", "session": 60.0}, 1 << 20), b"c1"])
        assert sock.poll(5000), "no answer from the worker's direct socket"
        reply = sock.recv_multipart()
        assert reply[1] == b"\x0a" and b"not reserved" in reply[2], reply
        sock.close()
