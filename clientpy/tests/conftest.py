"""Fixtures: real `aserpc broker` and worker processes (see procs.py for the environment)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import procs  # noqa: E402


def pytest_report_header(config):
    return f"aserpc worker: {procs.WORKER_KIND} (ASERPC_TEST_WORKER)"


@pytest.fixture(scope="session")
def aserpc_bin():
    try:
        return procs.aserpc_bin()
    except procs.Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def broker(aserpc_bin):
    """A running broker (worker timeout 1 s) on fresh ipc sockets; workers via broker.worker()."""
    b = procs.Broker(binary=aserpc_bin).start(timeout=1.0)
    yield b
    b.close()


@pytest.fixture(scope="module")
def lj_broker(aserpc_bin):
    """A broker with one LJ worker, shared by a module's tests."""
    b = procs.Broker(binary=aserpc_bin).start(timeout=2.0)
    b.worker("LJ")
    yield b
    b.close()


@pytest.fixture
def ours():
    if procs.WORKER_KIND != "ours":
        pytest.skip("needs aserpc's own worker (typed results, info, error types); "
                    "ASERPC_TEST_WORKER=reference runs aserpc 0.1.3's")
