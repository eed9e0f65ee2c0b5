"""RemoteCalculator, helpers and calculate_many against a real `aserpc broker` and workers."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

import procs
from aserpc import (AserpcError, NoWorkersError, RemoteCalculator, RemoteError, broker_status,
                    calculate_many, list_calculators, shutdown_workers)

G2 = ["H2", "H2O", "NH3", "CH4", "CO", "CO2", "O2", "N2"]
# aserpc's worker runs this Python's ase, so results are bit-identical; 0.1.3's runs its
# venv's (newer) ase.
EXACT = procs.WORKER_KIND == "ours"


def assert_same(a, b):
    if EXACT:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def requests(b) -> int:
    return broker_status(b.frontend)["broker"]["counters"]["requests"]


# ---------------------------------------------------------------- results equal local ones


@pytest.mark.parametrize("name", G2)
def test_remote_lj_equals_local(lj_broker, name):
    remote = molecule(name)
    remote.calc = RemoteCalculator("LJ", broker=lj_broker.frontend, check_broker=False)
    local = molecule(name)
    local.calc = LennardJones()
    e, f = remote.get_potential_energy(), remote.get_forces()
    assert isinstance(e, float)
    assert_same(e, local.get_potential_energy())
    assert_same(f, local.get_forces())
    assert f.shape == (len(remote), 3)
    assert remote.calc.round_trips == 1


def test_cu_bulk_with_stress_in_one_round_trip(lj_broker):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    cu.rattle(0.05, seed=1)
    local = cu.copy()
    local.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=6.0)
    remote = cu.copy()
    # LJ parameters travel through the registry? No: the worker's LJ has defaults, so compare
    # with defaults; the point is energy+forces+stress in one round trip.
    local.calc = LennardJones()
    remote.calc = RemoteCalculator("LJ", broker=lj_broker.frontend)
    before = requests(lj_broker)
    e = remote.get_potential_energy()
    f = remote.get_forces()
    s = remote.get_stress()
    assert requests(lj_broker) - before == 1 and remote.calc.round_trips == 1
    assert_same(e, local.get_potential_energy())
    assert_same(f, local.get_forces())
    assert s.shape == (6,)
    assert_same(s, local.get_stress())


def test_one_round_trip_for_energy_and_forces(lj_broker):
    w = molecule("H2O")
    w.calc = RemoteCalculator("LJ", broker=lj_broker.frontend)
    before = requests(lj_broker)
    w.get_potential_energy()
    w.get_forces()
    w.get_potential_energy()
    assert requests(lj_broker) - before == 1
    w.positions[0, 0] += 0.1
    w.get_forces()
    w.get_potential_energy()
    assert requests(lj_broker) - before == 2
    assert w.calc.round_trips == 2


def test_calculate_without_properties_skips_stress_for_molecules(lj_broker):
    w = molecule("CH4")
    calc = RemoteCalculator("LJ", broker=lj_broker.frontend)
    calc.calculate(w)  # 0.1.3 asked for stress too, which many calculators refuse here
    assert {"energy", "forces"} <= set(calc.results) and "stress" not in calc.results


# ---------------------------------------------------------------- errors


def test_no_workers(broker):
    w = molecule("H2O")
    w.calc = RemoteCalculator("LJ", broker=broker.frontend)
    with pytest.raises(NoWorkersError, match="No workers available for calculator 'LJ'"):
        w.get_potential_energy()
    with pytest.raises(RuntimeError, match="[Nn]o.*worker"):
        w.get_potential_energy()


def test_no_broker_is_connection_error(tmp_path):
    t = time.monotonic()
    with pytest.raises(ConnectionError, match=r"Broker not reachable at ipc://.* \(timeout: 2000ms\)"):
        RemoteCalculator("LJ", broker=f"ipc://{tmp_path}/nothing.ipc")
    assert time.monotonic() - t < 5


def test_timeout_on_a_missing_socket_says_so(tmp_path, monkeypatch):
    """A timeout on an ipc address whose socket file does not exist says so, and where the
    default address came from (it follows the project root or the working directory)."""
    from aserpc import calculate_many, list_calculators
    from ase.build import bulk

    path = tmp_path / "nothing.ipc"
    with pytest.raises(TimeoutError, match=rf"Timeout \(300ms\).*no broker socket at {path} \(the file does not exist"):
        list_calculators(f"ipc://{path}", timeout=300)
    with pytest.raises(TimeoutError, match="the file does not exist"):
        calculate_many([bulk("Cu")], "LJ", broker=f"ipc://{path}", timeout=300)
    monkeypatch.chdir(tmp_path)
    for k in ("ASERPC_IPC_DIR", "ASERPC_IPC_FRONTEND"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(TimeoutError, match=r"configured frontend \(the default: \.aserpc in the project root"):
        list_calculators(timeout=300)


def test_timeout_is_builtin_timeout_error(broker):
    # The worker's BUSY heartbeat (1 s) is slower than the timeout: the
    # broker's PROGRESS goes quiet for longer than 300 ms while computing.
    broker.worker("slow1500", registry=True, heartbeat=1.0)
    w = molecule("H2O")
    w.calc = RemoteCalculator("slow1500", broker=broker.frontend, timeout_ms=300)
    assert w.calc.timeout == 300
    with pytest.raises(TimeoutError, match=r"Receive timeout \(300ms\)"):
        w.get_potential_energy()


def test_busy_progress_outlasts_timeout(broker):
    # The broker forwards each BUSY as PROGRESS: a 1.5 s calculation with a
    # 300 ms timeout succeeds while its worker keeps reporting every 0.1 s.
    broker.worker("slow1500", registry=True, heartbeat=0.1)
    w = molecule("H2O")
    w.calc = RemoteCalculator("slow1500", broker=broker.frontend, timeout_ms=300)
    assert np.isfinite(w.get_potential_energy())


def test_calculator_error_arrives_with_message_and_type(broker):
    broker.worker("EMT")
    u = Atoms("U", positions=[[0, 0, 0]])
    u.calc = RemoteCalculator("EMT", broker=broker.frontend, retries=3)
    with pytest.raises(RuntimeError, match="No EMT-potential for U") as e:
        u.get_potential_energy()
    assert isinstance(e.value, RemoteError)
    if procs.WORKER_KIND == "ours":
        assert e.value.remote_type == "NotImplementedError"
        assert "emt.py" in e.value.remote_traceback
        assert u.calc.round_trips == 1  # deterministic: never retried


def test_failing_calculator_is_not_retried(broker, ours):
    broker.worker("failing", registry=True)
    w = molecule("H2O")
    w.calc = RemoteCalculator("failing", broker=broker.frontend, retries=5)
    with pytest.raises(RemoteError, match="this calculator always fails") as e:
        w.get_potential_energy()
    assert e.value.remote_type == "ValueError"
    assert w.calc.round_trips == 1


def test_retries_after_worker_killed_and_another_started(broker):
    first = broker.worker("LJ")
    w = molecule("H2O")
    w.calc = RemoteCalculator("LJ", broker=broker.frontend, retries=5, timeout=5000)
    e1 = w.get_potential_energy()
    first.kill()
    broker.worker("LJ", wait=False)
    w.positions[0, 2] += 0.05
    e2 = w.get_potential_energy()
    local = w.copy()
    local.calc = LennardJones()
    assert_same(e2, local.get_potential_energy())
    assert e1 != e2


def test_retries_across_a_broker_restart(broker):
    broker.worker("LJ", heartbeat=0.1)
    w = molecule("NH3")
    calc = RemoteCalculator("LJ", broker=broker.frontend, retries=6)
    w.calc = calc
    e1 = w.get_potential_energy()
    broker.stop()
    broker.start(timeout=1.0)  # same sockets; the worker re-registers with its READY heartbeat
    w.positions[0, 0] += 0.01
    w.get_potential_energy()
    w.positions[0, 0] -= 0.01
    assert w.get_potential_energy() == e1


def test_long_calculation_survives_short_worker_timeout(aserpc_bin):
    b = procs.Broker(binary=aserpc_bin).start(timeout=0.5)
    try:
        b.worker("slow1500", registry=True, heartbeat=0.1)
        w = molecule("H2O")
        w.calc = RemoteCalculator("slow1500", broker=b.frontend, timeout=10000)
        assert isinstance(w.get_potential_energy(), float)
        assert w.calc.round_trips == 1
        assert broker_status(b.frontend)["broker"]["counters"]["redispatched"] == 0
    finally:
        b.close()


# ---------------------------------------------------------------- the worker's environment


def test_worker_quiets_openblas_unless_the_user_chose(broker, ours, monkeypatch):
    """Idle OpenBLAS threads spin ~0.1 s after each call; the worker has them sleep at once
    (OPENBLAS_THREAD_TIMEOUT=4) unless the variable is already set."""
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    broker.worker("env", registry=True, name="env-default")
    broker.worker("env", registry=True, name="env-user", extra_env={"OPENBLAS_THREAD_TIMEOUT": "20"})
    for name, want in (("env-default", "4"), ("env-user", "20")):
        w = molecule("H2O")
        w.calc = RemoteCalculator(name, broker=broker.frontend)
        w.get_potential_energy()
        assert w.calc.get_property("blas_timeout", w) == want, name


# ---------------------------------------------------------------- info, arrays, typed results


def test_info_and_arrays_reach_the_worker_and_invalidate_the_cache(broker, ours):
    broker.worker("info", registry=True)
    w = molecule("H2O")
    w.info.update(charge=np.int64(1), spin=2)
    w.set_tags([3, 4, 5])
    w.calc = RemoteCalculator("info", broker=broker.frontend)
    assert w.get_potential_energy() == 21.0
    assert w.calc.get_property("info_types", w) == "int,int"  # fairchem rejects np.int64 and float
    np.testing.assert_array_equal(w.calc.get_property("tags_seen", w), [3, 4, 5])
    trips = w.calc.round_trips
    w.get_potential_energy()
    assert w.calc.round_trips == trips  # cached
    w.info["charge"] = -1  # ASE's check_state ignores info; ours does not
    w.get_potential_energy()
    assert w.calc.round_trips == trips + 1
    w.set_tags([0, 0, 1])
    w.get_potential_energy()
    assert w.calc.round_trips == trips + 2


def test_worker_recomputes_when_only_info_changes(broker, ours):
    # The worker reuses one calculator; ASE's cache ignores atoms.info, so the
    # worker resets it when info or per-atom arrays change.
    broker.worker("info", registry=True)
    w = molecule("H2O")
    w.info.update(charge=1, spin=2)
    w.calc = RemoteCalculator("info", broker=broker.frontend)
    assert w.get_potential_energy() == 21.0
    w.info["charge"] = -1
    assert w.get_potential_energy() == 19.0


def test_typed_results_keep_dtype_and_shape(broker, ours):
    broker.worker("info", registry=True)
    w = molecule("CH4")
    w.calc = RemoteCalculator("info", broker=broker.frontend)
    counts = w.calc.get_property("counts", w)
    assert counts.dtype == np.int32 and counts.shape == (5,)
    m = w.calc.get_property("matrix", w)
    assert m.shape == (3, 3) and m[2, 1] == 7.0
    plain = RemoteCalculator("info", broker=broker.frontend, typed_results=False)
    assert plain.get_property("matrix", w).shape == (9,)  # 0.1.3's flat float64


def test_remote_property_not_implemented_is_ase_error(lj_broker):
    from ase.calculators.calculator import PropertyNotImplementedError

    w = molecule("H2O")
    w.calc = RemoteCalculator("LJ", broker=lj_broker.frontend)
    if procs.WORKER_KIND == "ours":
        with pytest.raises(PropertyNotImplementedError):
            w.calc.get_property("stresses", w)  # LJ has no stresses for a molecule
    assert w.calc.get_property("energies", w).shape == (3,)


# ---------------------------------------------------------------- ASE dynamics


def test_bfgs_and_velocity_verlet_match_local(broker):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    broker.worker("EMT")

    def relax(calc):
        a = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
        a.pbc = False
        a.rattle(0.1, seed=3)
        a.calc = calc
        traj = []
        opt = BFGS(a, logfile=None)
        opt.attach(lambda: traj.append(a.positions.copy()))
        opt.run(fmax=0.05, steps=50)
        return np.array(traj)

    def md(calc):
        a = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
        a.rattle(0.05, seed=4)
        MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.RandomState(5))
        a.calc = calc
        traj = []
        dyn = VelocityVerlet(a, 5 * units.fs, logfile=None)
        dyn.attach(lambda: traj.append((a.positions.copy(), a.get_potential_energy(), a.get_stress())))
        dyn.run(100)
        return traj

    remote = RemoteCalculator("EMT", broker=broker.frontend)
    r, l = relax(remote), relax(EMT())
    assert r.shape == l.shape and len(r) > 3
    assert_same(r, l)
    trips = remote.round_trips
    rm, lm = md(remote), md(EMT())
    assert len(rm) == len(lm) == 101
    for (rp, re, rs), (lp, le, ls) in zip(rm, lm):
        assert_same(rp, lp)
        assert_same(re, le)
        assert_same(rs, ls)
    # forces, energy and stress of each step in one round trip (the first step re-uses none)
    assert remote.round_trips - trips <= 102


# ---------------------------------------------------------------- helpers and lifecycle


def test_helpers(broker):
    broker.worker("LJ")
    broker.worker("EMT")
    assert list_calculators(broker.frontend) == {"LJ": 1, "EMT": 1}
    st = broker_status(broker.frontend)
    assert st["workers"]["LJ"] == {"total": 1, "idle": 1, "busy": 0}
    assert st["manager"]["connected"] is False
    assert shutdown_workers(broker=broker.frontend) == 2  # None = every calculator
    broker.wait_count("LJ", 0)
    broker.wait_count("EMT", 0)
    assert shutdown_workers("LJ", broker=broker.frontend) == 0


def test_context_manager_close_and_reuse(lj_broker):
    w = molecule("CO")
    with RemoteCalculator("LJ", broker=lj_broker.frontend) as calc:
        w.calc = calc
        e = w.get_potential_energy()
    assert calc._conn._sock is None
    w.positions[0, 0] += 0.1
    assert w.get_potential_energy() != e  # reopens on use


def test_threads_share_a_calculator_safely(lj_broker):
    import threading

    calc = RemoteCalculator("LJ", broker=lj_broker.frontend)
    out, errors = {}, []

    def run(i):
        try:
            a = molecule("H2O")
            a.positions[0, 2] += 0.01 * i
            for _ in range(5):
                out[i] = calc.get_potential_energy(a)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for i, e in out.items():
        a = molecule("H2O")
        a.positions[0, 2] += 0.01 * i
        a.calc = LennardJones()
        assert_same(e, a.get_potential_energy())


# ---------------------------------------------------------------- many structures


def _structures(n):
    out = []
    for i in range(n):
        a = molecule("H2O")
        a.rattle(0.02, seed=i)
        out.append(a)
    return out


def test_calculate_many_keeps_order_and_speeds_up(broker):
    broker.worker("slow20", registry=True)
    broker.worker("slow20", registry=True)
    structures = _structures(40)
    calc = RemoteCalculator("slow20", broker=broker.frontend)

    t = time.perf_counter()
    seq = []
    for a in structures:
        a = a.copy()
        a.calc = calc
        seq.append((a.get_potential_energy(), a.get_forces()))
    t_seq = time.perf_counter() - t

    t = time.perf_counter()
    res = calculate_many(structures, "slow20", broker=broker.frontend, progress_bar=False)
    t_many = time.perf_counter() - t

    assert len(res) == len(structures)
    for (e, f), r, a in zip(seq, res, structures):
        assert r["energy"] == e
        np.testing.assert_array_equal(r["forces"], f)
        local = a.copy()
        local.calc = LennardJones()
        assert_same(r["energy"], local.get_potential_energy())
    speedup = t_seq / t_many
    print(f"sequential {t_seq:.3f}s, calculate_many {t_many:.3f}s, speed-up {speedup:.2f}x")
    assert speedup >= 1.8


def test_calculate_many_errors(broker):
    broker.worker("EMT")
    good = bulk("Cu", "fcc", a=3.6)
    bad = Atoms("U", positions=[[0, 0, 0]])
    res = calculate_many([good, bad, good], "EMT", broker=broker.frontend, return_exceptions=True,
                         progress_bar=False)
    assert isinstance(res[1], RemoteError) and "No EMT-potential for U" in str(res[1])
    assert res[0]["energy"] == res[2]["energy"] and res[0]["stress"].shape == (6,)
    with pytest.raises(RemoteError):
        calculate_many([good, bad], "EMT", broker=broker.frontend, progress_bar=False)
    with pytest.raises(NoWorkersError):
        calculate_many([good], "nobody", broker=broker.frontend, progress_bar=False)
    assert calculate_many([], "EMT", broker=broker.frontend) == []


def test_calculate_many_method(lj_broker):
    calc = RemoteCalculator("LJ", broker=lj_broker.frontend)
    res = calc.calculate_many(_structures(5), properties=["energy"], progress_bar=False)
    assert [sorted(r) for r in res] == [["energy"]] * 5


def test_errors_share_one_base():
    from aserpc import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, AserpcError) and issubclass(cls, RuntimeError)
    assert issubclass(errors.BrokerUnreachableError, ConnectionError)
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
    assert issubclass(errors.ProtocolError, ValueError)
