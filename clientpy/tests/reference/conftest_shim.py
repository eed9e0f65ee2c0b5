"""aserpc 0.1.3's tests/conftest.py, re-done with subprocesses: same fixture names and classes,
but BrokerFixture runs `aserpc broker` and WorkerFixture an `aserpc worker` (ours, or 0.1.3's
with ASERPC_TEST_WORKER=reference) instead of in-process asyncio objects.

Copied as conftest.py next to the reference's own test files by test_reference_suite.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, List, Optional

import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

sys.path.insert(0, os.environ["ASERPC_CLIENTPY_TESTS"])
import procs  # noqa: E402

from aserpc import RemoteCalculator  # noqa: E402

# Tests not run, and why (see spec §9: [I] = internal, [P*] = an assertion on internals).
SKIP = {
    "test_long_running_calculation_not_timed_out":
        "[P*] asserts 'BUSY' appears in the 0.1.3 broker's log; the behaviour (a 1.5 s calculation with "
        "worker_timeout 0.5 s succeeds) is test_client.py::test_long_calculation_survives_short_worker_timeout",
    "test_cli_load_factory_direct": "[I] aserpc.cli is 0.1.3's Python CLI; ours is the Go binary",
    "test_cli_load_factory_invalid": "[I] aserpc.cli is 0.1.3's Python CLI; ours is the Go binary",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        why = SKIP.get(item.originalname or item.name)
        if why:
            item.add_marker(pytest.mark.skip(reason=why))


FACTORIES = {LennardJones: "ase.calculators.lj:LennardJones", EMT: "ase.calculators.emt:EMT"}


class BrokerFixture:
    def __init__(self, frontend: str, backend: str) -> None:
        self.frontend, self.backend = frontend, backend
        d = re.sub(r"^ipc://", "", frontend).rsplit("/", 1)[0]
        self._b = procs.Broker(directory=d)
        self._b.frontend, self._b.backend = frontend, backend
        self._b.dir = d

    def start(self, worker_timeout: float = 1.0) -> None:
        self._b.start(timeout=worker_timeout)

    def stop(self) -> None:
        self._b.stop()

    @property
    def is_running(self) -> bool:
        return self._b.proc is not None and self._b.proc.alive()

    def get_logs(self) -> str:
        return self._b.proc.output() if self._b.proc else ""


class WorkerFixture:
    def __init__(self, name: str, broker_backend: str, calculator_factory: Callable) -> None:
        self.name, self.broker_backend, self.calculator_factory = name, broker_backend, calculator_factory
        self._p: Optional[procs.Proc] = None

    def start(self) -> None:
        spec = FACTORIES.get(self.calculator_factory)
        if spec is None:
            pytest.skip(f"factory {self.calculator_factory!r} cannot be served from a subprocess")
        d = re.sub(r"^ipc://", "", self.broker_backend).rsplit("/", 1)[0]
        b = procs.Broker(directory=d)
        b.frontend, b.backend = f"ipc://{d}/f.ipc", self.broker_backend
        self._p = b.worker(spec, name=self.name)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()

    @property
    def is_running(self) -> bool:
        return self._p is not None and self._p.alive()

    def get_logs(self) -> str:
        return self._p.output() if self._p else ""

    @property
    def requests_handled(self) -> int:
        if procs.WORKER_KIND != "ours":
            pytest.skip("requests_handled is counted from our worker's DEBUG log ('request handled')")
        return self.get_logs().count("request handled")


@pytest.fixture
def broker():
    ipc_dir = f"/tmp/aserpc-{uuid.uuid4().hex[:8]}"
    Path(ipc_dir).mkdir(parents=True, exist_ok=True)
    b = BrokerFixture(frontend=f"ipc://{ipc_dir}/f.ipc", backend=f"ipc://{ipc_dir}/b.ipc")
    b.start()
    yield b
    b.stop()
    shutil.rmtree(ipc_dir, ignore_errors=True)


@pytest.fixture
def lj_worker(broker):
    w = WorkerFixture(name="lj", broker_backend=broker.backend, calculator_factory=LennardJones)
    w.start()
    yield w
    w.stop()


@pytest.fixture
def lj_worker_factory(broker):
    workers: List[WorkerFixture] = []

    def create_worker() -> WorkerFixture:
        w = WorkerFixture(name="lj", broker_backend=broker.backend, calculator_factory=LennardJones)
        w.start()
        workers.append(w)
        return w

    yield create_worker
    for w in workers:
        w.stop()


@pytest.fixture
def remote_lj_calculator(broker):
    return RemoteCalculator(calc_name="lj", broker=broker.frontend, timeout=10000, check_broker=False)


@pytest.fixture
def remote_calculator_factory(broker):
    def factory(calc_name: str) -> RemoteCalculator:
        return RemoteCalculator(calc_name=calc_name, broker=broker.frontend, timeout=10000, check_broker=False)

    return factory


@pytest.fixture
def water() -> Atoms:
    return molecule("H2O")


@pytest.fixture
def ethanol() -> Atoms:
    return molecule("CH3CH2OH")


@pytest.fixture
def methane() -> Atoms:
    return molecule("CH4")


G2_MOLECULES = ["H2", "H2O", "NH3", "CH4", "CO", "CO2", "O2", "N2"]


@pytest.fixture(params=G2_MOLECULES, ids=G2_MOLECULES)
def g2_molecule(request) -> Atoms:
    return molecule(request.param)


@pytest.fixture
def molecules_batch() -> List[Atoms]:
    return [molecule(name) for name in G2_MOLECULES]
