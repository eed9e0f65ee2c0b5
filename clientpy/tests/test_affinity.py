"""Affinity (issue 20, first part): a RemoteCalculator's requests go to the worker that served
its previous one while that worker is idle, so a stateful calculator continues from this
client's own last structure. ``WarmStart`` (tests/calculators.py) counts 5 SCF iterations when
its worker's previous structure was this one's predecessor, 20 otherwise."""

from __future__ import annotations

import pytest
from ase.build import molecule

import procs
from aserpc import RemoteCalculator, broker_status

pytestmark = pytest.mark.skipif(procs.WORKER_KIND != "ours", reason="affinity is aserpc's broker's")


def md(calcs, steps=8):
    """Clients stepping in turn (as independent MD runs would, or one run alone); per client
    the SCF iterations and worker pids of its steps."""
    systems = []
    for k, calc in enumerate(calcs):
        a = molecule("H2O")
        a.positions += 3.0 * k  # each client its own structure
        a.calc = calc
        systems.append(a)
    out = [([], []) for _ in calcs]
    for _ in range(steps):
        for a, (iters, pids) in zip(systems, out):
            a.positions[0, 0] += 0.01
            a.get_potential_energy()
            iters.append(int(a.calc.results["scf_iterations"]))
            pids.append(int(a.calc.results["pid"]))
    return out


@pytest.fixture
def two_workers(broker):
    broker.worker("warm", registry=True)
    broker.worker("warm", registry=True)
    return broker


def test_one_client_keeps_its_worker(two_workers):
    b = two_workers
    (iters, pids), = md([RemoteCalculator("warm", broker=b.frontend)])
    assert len(set(pids)) == 1, pids
    assert iters == [20] + [5] * 7, iters
    # Without affinity (0.1.3's least recently used), the same loop alternates workers and every
    # step starts cold: the test can fail.
    (iters, pids), = md([RemoteCalculator("warm", broker=b.frontend, affinity=False)])
    assert len(set(pids)) == 2 and iters.count(20) == len(iters), (iters, pids)


def test_two_clients_each_keep_theirs(two_workers):
    b = two_workers
    out = md([RemoteCalculator("warm", broker=b.frontend), RemoteCalculator("warm", broker=b.frontend)])
    (i1, p1), (i2, p2) = out
    assert len(set(p1)) == 1 and len(set(p2)) == 1 and p1[0] != p2[0], (p1, p2)
    assert i1[1:] == [5] * 7 and i2[1:] == [5] * 7, (i1, i2)
    c = broker_status(b.frontend)["broker"]["counters"]
    assert c["affinity_hits"] >= 14, c
