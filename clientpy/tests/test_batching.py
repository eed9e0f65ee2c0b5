"""Dynamic batching (issue 27) with real broker, worker and client processes.

The worker serves ``BatchToy`` (tests/calculators.py): a calculator with ``calculate_batch``
and ``batch_key`` that records every call it gets, so these tests see the batches that formed:
their sizes, atoms and keys. Results are closed forms of each structure, so a batched result
must equal the single one exactly.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time

import numpy as np
import pytest
from ase import Atoms

import procs
from aserpc import RemoteCalculator, broker_status, calculate_many
from calculators import BatchToy

pytestmark = pytest.mark.skipif(procs.WORKER_KIND != "ours", reason="batching is aserpc's own worker's")


def structures(n, size=3, task=None, seed=7):
    """n distinct structures of size atoms: molecules and periodic cells mixed."""
    out = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        if i % 2:
            a = Atoms(numbers=rng.integers(1, 30, size), positions=rng.normal(scale=2.0, size=(size, 3)))
        else:
            a = Atoms(numbers=rng.integers(1, 30, size), positions=rng.normal(scale=2.0, size=(size, 3)),
                      cell=np.eye(3) * (6 + i % 5), pbc=True)
        if task is not None:
            a.info["task"] = task
        out.append(a)
    return out


def batches(log):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def toy(broker, tmp_path):
    """Start a batching BatchToy worker: toy(name="batchtoy", size=8, atoms=0, wait_ms=20)."""
    log = str(tmp_path / "batches.jsonl")

    def start(calc="batchtoy", size=8, atoms=0, wait_ms=20.0, name=None):
        extra = ["--batch-size", str(size), "--batch-atoms", str(atoms), "--batch-wait-ms", str(wait_ms)]
        return broker.worker(calc, registry=True, name=name, extra=extra,
                             extra_env={"ASERPC_TEST_BATCH_LOG": log})

    start.log = log
    return start


def expect(atoms, res, props=("energy", "forces")):
    want = BatchToy.closed_form(atoms)
    for p in props:
        np.testing.assert_array_equal(np.asarray(res[p]), np.asarray(want[p]), err_msg=p)


def test_concurrent_clients_share_batches(broker, toy):
    """Sixteen independent clients (each its own RemoteCalculator, as separate scripts would
    have) looping over their own structures: their requests meet in batches of more than one,
    never more than the worker's size, and every result is its own structure's."""
    w = toy(size=8, wait_ms=20)
    errors = []

    def client(k):
        try:
            calc = RemoteCalculator("batchtoy", broker=broker.frontend)
            for a in structures(6, size=3 + k % 4, seed=k):
                a.calc = calc
                res = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
                expect(a, res)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # Every structure computed once (a batch now and then goes one by one: the worker
    # measures whether batching pays).
    assert sum(b["n"] for b in batches(toy.log)) == 16 * 6
    got = [b for b in batches(toy.log) if b["kind"] == "batch"]
    sizes = [b["n"] for b in got]
    assert max(sizes) > 1, f"no batch of more than one formed: {sizes}"
    assert max(sizes) <= 8, sizes
    st = broker_status(broker.frontend)["workers"]["batchtoy"]
    assert st["capacity"] == 8 and st["batch"]["structures"] == 96, st
    assert st["batch"]["mean_size"] > 1.5, st
    assert "batching" in w.output() and "via" in w.output()


def test_calculate_many_fills_batches_and_atom_budget_holds(broker, toy):
    """calculate_many keeps enough in flight to fill batches; no call holds more than the atom
    budget, except a structure bigger than it, which goes alone (never refused)."""
    toy(size=16, atoms=40, wait_ms=5)
    items = structures(30, size=8) + [structures(1, size=50)[0]]
    res = calculate_many(items, "batchtoy", ["energy", "forces"], broker=broker.frontend)
    for a, r in zip(items, res):
        expect(a, r)
    got = [b for b in batches(toy.log) if b["kind"] == "batch"]
    assert max(b["n"] for b in got) > 1, got
    for b in got:
        assert b["atoms"] <= 40 or b["n"] == 1, b
    assert any(b["atoms"] == 50 and b["n"] == 1 for b in got), got


def test_grouping_keys_never_mix(broker, toy):
    """Structures of different tasks (UMA's task/charge/spin) never share a model call."""
    toy(size=16, wait_ms=5)
    items = []
    for i, task in enumerate(["omol", "omat", "oc20"] * 8):
        a = structures(1, size=4 + i % 3, task=task)[0]
        items.append(a)
    res = calculate_many(items, "batchtoy", ["energy"], broker=broker.frontend)
    for a, r in zip(items, res):
        assert r["energy"] == BatchToy.closed_form(a)["energy"]
    got = [b for b in batches(toy.log) if b["kind"] == "batch"]
    assert all(len(set(b["keys"])) == 1 for b in got), got
    assert max(b["n"] for b in got) > 1, got


def test_one_bad_structure_fails_only_its_request(broker, toy):
    """A batch call that raises is retried one structure at a time: the poisoned structure's
    request fails with the calculator's error, every other one succeeds."""
    toy(size=16, wait_ms=5)
    items = structures(12, size=4)
    items[5].info["poison"] = True
    res = calculate_many(items, "batchtoy", ["energy", "forces"], broker=broker.frontend, return_exceptions=True)
    for i, (a, r) in enumerate(zip(items, res)):
        if i == 5:
            assert isinstance(r, Exception) and "poisoned structure" in str(r), r
        else:
            expect(a, r)


def test_out_of_memory_splits_and_lowers_the_budget(broker, toy):
    """A batch over the toy's 24-atom 'GPU memory' raises a torch-style OutOfMemoryError: the
    worker splits it and retries, every request succeeds, and later batches stay within the
    atoms that fitted (logged, and counted in STATUS)."""
    w = toy(calc="batchtoy_oom", size=16, atoms=0, wait_ms=5)
    items = structures(24, size=8)
    res = calculate_many(items, "batchtoy_oom", ["energy", "forces"], broker=broker.frontend)
    for a, r in zip(items, res):
        expect(a, r)
    got = [b for b in batches(toy.log) if b["kind"] == "batch"]
    assert all(b["atoms"] <= 24 for b in got), got  # only calls that fitted are recorded
    out = w.output()
    assert "out of memory on a batch" in out and "atom_budget" in out, out[-3000:]
    st = broker_status(broker.frontend)["workers"]["batchtoy_oom"]
    assert st["batch"]["splits"] >= 1, st
    # A second round starts within the lowered budget: no more splits.
    splits = st["batch"]["splits"]
    calculate_many(structures(24, size=8), "batchtoy_oom", ["energy"], broker=broker.frontend)
    assert broker_status(broker.frontend)["workers"]["batchtoy_oom"]["batch"]["splits"] == splits


def test_a_lone_client_does_not_wait(broker, toy):
    """With a long wait (300 ms), a lone client's requests are still computed at once: the
    broker's hint says nobody else is expected. (Were the worker to wait, each step would take
    300 ms more.)"""
    toy(size=8, wait_ms=300)
    calc = RemoteCalculator("batchtoy", broker=broker.frontend)
    a = structures(1, size=5)[0]
    a.calc = calc
    times = []
    for i in range(8):
        a.positions[0, 0] += 0.01
        t0 = time.perf_counter()
        a.get_potential_energy()
        times.append(time.perf_counter() - t0)
    # The toy takes 21 ms per call.
    assert statistics.median(times) < 0.15, times


def test_replicas_batch_together(broker, toy):
    """Four MD-like replicas in lockstep (each its own client, stepping as soon as its result
    comes) are computed together: after the first steps, batches of four form, thanks to the
    wait for clients the broker expects."""
    toy(size=8, wait_ms=50)
    barrier = threading.Barrier(4)
    errors = []

    def replica(k):
        try:
            calc = RemoteCalculator("batchtoy", broker=broker.frontend)
            a = structures(1, size=6 + k)[0]
            a.calc = calc
            barrier.wait()
            for _ in range(15):
                a.positions += 0.001 * a.get_forces()
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(b["n"] for b in batches(toy.log)) == 60
    sizes = [b["n"] for b in batches(toy.log) if b["kind"] == "batch"]
    late = sizes[len(sizes) // 2:]
    assert statistics.mean(late) >= 3, sizes


def test_worker_death_redispatches_every_held_job(broker, toy):
    """A batching worker killed while it computes a batch: every job it held goes to the other
    worker, and every client gets its own result."""
    import signal

    slow = toy(calc="batchtoy_slow", size=8, wait_ms=20)
    errors, results = [], {}

    def client(k, a):
        try:
            calc = RemoteCalculator("batchtoy_slow", broker=broker.frontend)
            a.calc = calc
            results[k] = a.get_potential_energy()
        except Exception as e:  # pragma: no cover
            errors.append(e)

    items = structures(6, size=4)
    threads = [threading.Thread(target=client, args=(k, a)) for k, a in enumerate(items)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while not broker_status(broker.frontend)["workers"]["batchtoy_slow"].get("held"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # the batch is being computed (1 s)
    toy(calc="batchtoy_slow", size=8, wait_ms=20)  # the one that takes over
    slow.p.send_signal(signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert not errors, errors
    for k, a in enumerate(items):
        assert results[k] == BatchToy.closed_form(a)["energy"]


def test_batching_that_does_not_pay_is_turned_off(broker, toy):
    """A model whose batches are slower than its structures one by one: the worker measures
    both (one batch in fifty, and the second) and computes one by one, so batching never
    makes it slower."""
    w = toy(calc="batchtoy_bad", size=8, wait_ms=5)
    items = structures(120, size=4)
    t0 = time.perf_counter()
    res = calculate_many(items, "batchtoy_bad", ["energy"], broker=broker.frontend)
    took = time.perf_counter() - t0
    for a, r in zip(items, res):
        assert r["energy"] == BatchToy.closed_form(a)["energy"]
    assert "batching does not pay" in w.output(), w.output()[-2000:]
    kinds = [b["kind"] for b in batches(toy.log)]
    assert kinds.count("single") > 0.8 * len(items), kinds
    # One by one the toy takes 10 ms per structure; all batched it would take 30 ms.
    assert took < 120 * 0.02, took
