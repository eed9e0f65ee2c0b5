"""A worker's thread budget and CPU placement (issue 22), started by hand: `--cpus` pins the
whole worker (threads its Python starts included), `--threads` sets OMP/MKL/OpenBLAS threads
unless the user set them, and the broker's worker list shows both."""

from __future__ import annotations

import os

import pytest
from ase.build import molecule

import procs
from aserpc import RemoteCalculator, broker_status

pytestmark = pytest.mark.skipif(procs.WORKER_KIND != "ours", reason="placement is aserpc's own worker's")


def where(broker, name):
    a = molecule("H2O")
    a.calc = RemoteCalculator(name, broker=broker.frontend, all_results=True)
    a.get_potential_energy()
    return a.calc.results


def test_cpus_pin_the_worker_and_size_its_threads(broker):
    cpu = sorted(os.sched_getaffinity(0))[-1]
    w = broker.worker("placement", registry=True, extra=["--cpus", str(cpu)])
    r = where(broker, "placement")
    assert r["cpus"] == str(cpu) and r["thread_cpus"] == str(cpu), r
    # (one thread per CPU of the list, unless this test's own environment sets them)
    want = tuple(os.environ.get(k) or "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    assert (r["omp"], r["mkl"], r["openblas"]) == want, r
    assert "thread budget" in w.output() and f"cpus={cpu}" in w.output()
    row = [x for x in broker_status(broker.frontend)["worker_list"] if x["calc"] == "placement"][0]
    assert row.get("threads") == 1 and row.get("cpus") == str(cpu), row


def test_the_users_thread_variables_win(broker):
    env = {"OMP_NUM_THREADS": "7"}
    w = broker.worker("placement", registry=True, extra=["--threads", "2"], extra_env=env)
    r = where(broker, "placement")
    want = ("7",) + tuple(os.environ.get(k) or "2" for k in ("MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"))
    assert (r["omp"], r["mkl"], r["openblas"]) == want, r
    assert r["cpus"] == ",".join(map(str, sorted(os.sched_getaffinity(0)))), r  # not pinned
    assert "kept" in w.output() and "OMP_NUM_THREADS=7" in w.output()


def test_bad_cpu_list_is_refused(broker):
    with pytest.raises(RuntimeError, match=r"--cpus"):
        broker.worker("placement", registry=True, extra=["--cpus", "9999"])
