"""Configuration, SpawnConfig, the progress seam (with a fake broker) and a 0.1.3 broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import aserpc
import msgpack
import numpy as np
import pytest
import zmq
from ase.build import bulk, molecule

import procs
from aserpc import (ConfigError, RemoteCalculator, SpawnConfig, calculate_many, list_calculators,
                    load_config)
from aserpc import _state, protocol
from aserpc._transport import Waiter

# ---------------------------------------------------------------- check_state


def _state_variants():
    from ase import Atoms

    yield "same", lambda a: None
    yield "tiny move", lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-16)
    yield "move", lambda a: a.positions.__setitem__((1, 1), a.positions[1, 1] + 1e-10)
    yield "numbers", lambda a: a.numbers.__setitem__(2, 7)
    yield "cell tiny", lambda a: a.set_cell(np.array(a.cell) + 1e-16)
    yield "cell", lambda a: a.set_cell([5, 5, 6])
    yield "pbc", lambda a: a.set_pbc([True, True, True])
    yield "magmoms added", lambda a: a.set_initial_magnetic_moments([1] + [0] * (len(a) - 1))
    yield "charges added", lambda a: a.set_initial_charges([0.5, -0.5] + [0] * (len(a) - 2))
    yield "inf position", lambda a: a.positions.__setitem__((2, 2), np.inf)
    yield "nan position", lambda a: a.positions.__setitem__((2, 2), np.nan)
    yield "longer", lambda a: a.extend(Atoms("H", positions=[[1, 1, 1]]))
    yield "info", lambda a: a.info.__setitem__("charge", 1)


@pytest.mark.parametrize("start", ["plain", "magmoms", "nan", "large"])
@pytest.mark.parametrize("ignored", [(), ("pbc",), ("positions", "initial_magmoms")])
def test_check_state_is_ases(start, ignored):
    """RemoteCalculator computes check_state without np.allclose; the answer must be ASE's
    (as a set: ASE's order follows set iteration), plus "info" where only what travels in the
    wire extension changed. "large" has more atoms than _state compares in pure Python."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator

    def base():
        a = Atoms("H2O", positions=[[0, 0, 0.12], [0, 0.76, -0.48], [0, -0.76, -0.48]],
                  cell=[5, 5, 5], pbc=[True, False, True])
        if start == "large":
            a = a.repeat((1, 1, 10))
            assert a.positions.size > _state._SMALL
        if start == "magmoms":
            a.set_initial_magnetic_moments([1, 0, 0])
        if start == "nan":
            a.positions[2, 2] = np.nan
        return a

    calc = RemoteCalculator("LJ", broker="ipc:///nonexistent", check_broker=False)
    calc.ignored_changes = set(ignored)
    first = base()
    assert set(calc.check_state(first)) == set(Calculator.check_state(calc, first))  # no atoms yet
    calc.atoms, calc._sent_ext = first.copy(), calc._extension(first)
    for name, change in _state_variants():
        second = base()
        change(second)
        want = set(Calculator.check_state(calc, second))
        if not want and calc._extension(second) != calc._sent_ext:
            want = {"info"}  # info, or a per-atom array the worker is sent
        if name == "info":
            assert want  # never "nothing changed" (NaN positions always differ)
        assert set(calc.check_state(second)) == want, name


# ---------------------------------------------------------------- configuration


def test_config_defaults_and_precedence(tmp_path):
    c = load_config(str(tmp_path), {})
    assert c.ipc_frontend == f"ipc://{tmp_path}/.aserpc/frontend.ipc"
    assert c.client_timeout_ms == 60000 and c.worker_timeout == 30.0
    assert c.max_message_size == 256 << 20
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.aserpc]\nipc_dir = "run"\nclient_timeout_ms = 1234\nworker_timeout = 7\n')
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    c = load_config(str(sub), {})
    assert c.ipc_dir == str(tmp_path / "run")  # relative to the pyproject that set it
    assert c.client_timeout_ms == 1234 and c.worker_timeout == 7.0
    assert c.project == str(tmp_path / "pyproject.toml")
    c = load_config(str(sub), {"ASERPC_CLIENT_TIMEOUT_MS": "99", "ASERPC_IPC_DIR": "rel"})
    assert c.client_timeout_ms == 99
    assert load_config(str(sub), {"ASERPC_MAX_MESSAGE_SIZE": "1024"}).max_message_size == 1024
    assert c.client_spin_us == 1000 and load_config(str(sub), {"ASERPC_CLIENT_SPIN_US": "0"}).client_spin_us == 0
    with pytest.raises(ConfigError, match="client_spin_us"):
        load_config(str(sub), {"ASERPC_CLIENT_SPIN_US": "-1"})
    assert c.ipc_dir == str(sub / "rel")  # env: relative to the working directory
    assert c.sources["client_timeout_ms"] == "env ASERPC_CLIENT_TIMEOUT_MS"


@pytest.mark.parametrize("key,value,want", [
    ("ASERPC_CLIENT_TIMEOUT_MS", "60000.0", "want an integer"),
    ("ASERPC_WORKER_TIMEOUT", "abc", "want a number"),
    ("ASERPC_IDLE_TIMEOUT", "-1", "want zero or a positive value"),
    ("ASERPC_IPC_FRONTEND", "", "want a non-empty string"),
])
def test_bad_env_value_errors_when_used_not_at_import(tmp_path, key, value, want):
    env = dict(os.environ, **{key: value}, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", "import aserpc, aserpc.constants; print('ok')"],
                       env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert r.stdout.strip() == "ok", r.stderr
    with pytest.raises(ConfigError, match=f"config .* \\(from env {key}\\): {want}"):
        load_config(str(tmp_path), {key: value})


def test_invalid_pyproject_is_an_error(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.aserpc\n")
    with pytest.raises(ConfigError, match="pyproject.toml"):
        load_config(str(tmp_path), {})


def test_constants_resolve_lazily(monkeypatch):
    import aserpc.constants as c

    monkeypatch.setenv("ASERPC_IPC_FRONTEND", "tcp://127.0.0.1:1")
    assert c.IPC_FRONTEND == "tcp://127.0.0.1:1"
    assert c.REQUEST == b"\x04" and c.MESSAGE_NAMES[b"\x05"] == "RESPONSE"


def test_mini_toml_matches_tomllib():
    from aserpc.config import _mini_toml

    text = ('[project]\nname = "x"  # c\n[tool.aserpc]\nipc_dir = "/tmp/x"\nclient_timeout_ms = 5_000\n'
            "worker_timeout = 2.5\nipc_backend = 'ipc:///b'\n[tool.other]\nk = [1]\n")
    assert _mini_toml(text)["tool"]["aserpc"] == {
        "ipc_dir": "/tmp/x", "client_timeout_ms": 5000, "worker_timeout": 2.5, "ipc_backend": "ipc:///b"}


# ---------------------------------------------------------------- SpawnConfig


def test_spawn_config_render_is_brace_safe():
    cfg = SpawnConfig("mace", ["aserpc", "worker", "mace.calculators:mace_mp", "--name", "{name}",
                               "--broker", "{broker}", "--idle-timeout", "{idle_timeout}",
                               "--kwargs", '{"model": "medium"}', '{{"escaped": 1}}', '{"n": "{name}"}'],
                      idle_timeout=120)
    assert cfg.render_command(broker="ipc:///b.ipc") == [
        "aserpc", "worker", "mace.calculators:mace_mp", "--name", "mace", "--broker", "ipc:///b.ipc",
        "--idle-timeout", "120.0", "--kwargs", '{"model": "medium"}', '{"escaped": 1}', '{"n": "mace"}']
    d = SpawnConfig("x", ["a"])
    assert (d.env, d.cwd, d.idle_timeout) == (None, None, 300.0)


# ---------------------------------------------------------------- progress (proposed broker extension)


def test_waiter_phases():
    w = Waiter(1.0, compute_timeout_s=5.0, now=0.0)
    assert w.deadline() == 1.0
    assert str(w.error(1.0)) == "Receive timeout (1000ms)" and w.error(1.0).retryable
    w.progress({"state": "dispatched"}, now=0.9)
    w.progress({"state": "busy"}, now=1.8)
    assert w.deadline() == 2.8 and w.phase == "compute"
    for t in (2.7, 3.6, 4.5):
        w.progress({"state": "busy"}, now=t)
    assert w.deadline() == 5.5 - 0.0 and w.compute_started == 0.9
    w.progress({"state": "busy"}, now=5.8)
    assert w.deadline() == pytest.approx(5.9)  # the computation deadline, not the silence limit
    e = w.error(5.9)
    assert e.phase == "deadline" and not e.retryable
    w.progress({"state": "requeued"}, now=6.0)
    assert w.phase == "queue" and w.deadline() == 7.0


class FakeBroker:
    """A ROUTER that answers every REQUEST after `delay` s, sending PROGRESS busy every `beat` s
    (what the proposed broker extension would send a DEALER client)."""

    def __init__(self, address, delay, beat=None):
        self.address, self.delay, self.beat = address, delay, beat
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.bind(address)
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            ident, cmd, corr = frames[0], frames[2], frames[5:6]
            if cmd == b"\x06":
                self.sock.send_multipart([ident, b"", b"\x05", msgpack.packb({"x": 1}), *frames[3:4]])
                continue
            t0 = time.monotonic()
            self.sock.send_multipart([ident, b"", b"\x11", msgpack.packb({"state": "dispatched"}), *corr])
            while time.monotonic() - t0 < self.delay:
                time.sleep(self.beat or self.delay)
                if self.beat:
                    self.sock.send_multipart([ident, b"", b"\x11", msgpack.packb({"state": "busy"}), *corr])
            self.sock.send_multipart([ident, b"", b"\x05", protocol.pack_response({"energy": -1.0}), *corr])

    def close(self):
        self.stop = True
        self.t.join()
        self.sock.close(0)
        self.ctx.term()


def test_progress_keeps_a_long_calculation_alive(tmp_path):
    fb = FakeBroker(f"ipc://{tmp_path}/f.ipc", delay=1.0, beat=0.1)
    try:
        calc = RemoteCalculator("x", broker=fb.address, timeout=300, check_broker=False)
        assert calc.get_potential_energy(molecule("H2")) == -1.0
        calc.reset()
        calc.compute_timeout = 500
        with pytest.raises(TimeoutError, match="Computation deadline exceeded"):
            calc.get_potential_energy(molecule("H2"))
    finally:
        fb.close()


def test_without_progress_timeout_is_the_whole_wait(tmp_path):
    fb = FakeBroker(f"ipc://{tmp_path}/f.ipc", delay=1.0, beat=None)
    try:
        calc = RemoteCalculator("x", broker=fb.address, timeout=300, check_broker=False)
        with pytest.raises(TimeoutError, match=r"Receive timeout \(300ms\): no progress"):
            calc.get_potential_energy(molecule("H2"))
    finally:
        fb.close()


# ---------------------------------------------------------------- aserpc 0.1.3's broker


def test_ordinary_calls_and_calculate_many_work_with_a_0_1_3_broker(aserpc_bin):
    try:
        venv = procs.reference_venv()
    except procs.Unavailable as e:
        pytest.skip(str(e))
    b = procs.Broker(binary=aserpc_bin)
    argv = [os.path.join(venv, "bin", "aserpc"), "broker", "--frontend", b.frontend, "--backend", b.backend,
            "--timeout", "2"]
    try:
        b.start(argv=argv)
        b.worker("LJ")
        b.worker("LJ")
        w = molecule("H2O")
        w.calc = RemoteCalculator("LJ", broker=b.frontend)
        e = w.get_potential_energy()
        assert w.get_forces().shape == (3, 3) and w.calc.round_trips == 1
        structures = [bulk("Cu", "fcc", a=3.6 + 0.01 * i) for i in range(6)]
        res = calculate_many(structures, "LJ", broker=b.frontend, progress_bar=False)
        for a, r in zip(structures, res):
            a.calc = RemoteCalculator("LJ", broker=b.frontend, check_broker=False)
            assert a.get_potential_energy() == r["energy"]
        assert list_calculators(b.frontend) == {"LJ": 2}
        assert isinstance(e, float)
    finally:
        b.close()


def test_no_import_cycles_in_the_package():
    """Each module of the package imports only modules below it (lazy imports included), so
    any module imports alone and the dependency order reads from the imports."""
    import ast

    pkg = os.path.dirname(aserpc.__file__)
    graph = {}
    for f in os.listdir(pkg):
        if f.endswith(".py"):
            deps = set()
            for node in ast.walk(ast.parse(open(os.path.join(pkg, f)).read())):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            graph[f[:-3]] = deps

    def visit(mod, path):
        for dep in graph.get(mod, ()):
            assert dep not in path, f"import cycle: {' -> '.join(path[path.index(dep):] + [dep])}"
            visit(dep, path + [dep])

    for mod in graph:
        visit(mod, [mod])
    assert {"client", "batch", "config", "curve"} <= set(graph)
