"""Real `aserpc broker` and worker processes for the tests.

Environment:

* ``ASERPC_BIN`` — the aserpc binary (default: built once with ``go build ./cmd/aserpc``
  from this repository into a temporary directory).
* ``ASERPC_TEST_WORKER`` — ``ours`` (default: ``aserpc worker ... --python <this python>``)
  or ``reference`` (aserpc 0.1.3's worker from PyPI, in a venv).
* ``ASERPC_REFERENCE_VENV`` — that venv (default: the Go tests' cached
  ``~/.cache/aserpc-test/ref-aserpc-0.1.3-py3.11-*``, else one built here with pip).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CALCULATORS = os.path.join(HERE, "calculators.py")

WORKER_KIND = os.environ.get("ASERPC_TEST_WORKER", "ours")
if WORKER_KIND not in ("ours", "reference"):
    raise RuntimeError(f"ASERPC_TEST_WORKER must be 'ours' or 'reference', not {WORKER_KIND!r}")

_bin: Optional[str] = None
_venv: Optional[str] = None


class Unavailable(Exception):
    """A prerequisite (Go toolchain, reference venv) is missing: the test is skipped."""


def aserpc_bin() -> str:
    global _bin
    if _bin:
        return _bin
    b = os.environ.get("ASERPC_BIN")
    if b:
        _bin = os.path.abspath(b)
        return _bin
    go = shutil.which("go")
    if go is None:
        raise Unavailable("no aserpc binary: set ASERPC_BIN or install Go")
    out = os.path.join(tempfile.mkdtemp(prefix="aserpc-bin-"), "aserpc")
    subprocess.run([go, "build", "-o", out, "./cmd/aserpc"], cwd=REPO, check=True)
    _bin = out
    return out


def cache_dir() -> str:
    d = os.environ.get("ASERPC_TEST_CACHE")
    if d:
        return d
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aserpc-test")


def reference_venv() -> str:
    """A venv with aserpc==0.1.3 from PyPI (made once, cached)."""
    global _venv
    if _venv:
        return _venv
    v = os.environ.get("ASERPC_REFERENCE_VENV")
    if v:
        _venv = v
        return v
    found = sorted(glob.glob(os.path.join(cache_dir(), "ref-aserpc-0.1.3-py3.11-*", "bin", "aserpc")))
    if found:
        _venv = os.path.dirname(os.path.dirname(found[0]))
        return _venv
    venv = os.path.join(cache_dir(), "clientpy-ref-aserpc-0.1.3")
    if not os.path.exists(os.path.join(venv, "bin", "aserpc")):
        base = (sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[123].*/bin/python3")))
                or [shutil.which("python3.11") or ""])[-1]
        if not base:
            raise Unavailable("no Python >= 3.11 for aserpc 0.1.3 (set ASERPC_REFERENCE_VENV)")
        tmp = venv + f".tmp{os.getpid()}"
        subprocess.run([base, "-m", "venv", tmp], check=True)
        r = subprocess.run([os.path.join(tmp, "bin", "pip"), "install", "-q", "aserpc==0.1.3"])
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise Unavailable("cannot install aserpc==0.1.3 from PyPI")
        os.rename(tmp, venv)
    _venv = venv
    return venv


def short_dir() -> str:
    """A directory for ipc sockets with a short path (the Unix socket limit is ~107 bytes)."""
    d = f"/tmp/aserpc-t-{uuid.uuid4().hex[:8]}"
    os.makedirs(d)
    return d


class Proc:
    """A child process whose output goes to a log file."""

    def __init__(self, argv: List[str], log: str, env: Optional[dict] = None) -> None:
        self.argv, self.log = argv, log
        self._f = open(log, "ab")
        self.p = subprocess.Popen(argv, stdout=self._f, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.alive():
            try:
                self.p.send_signal(sig)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._f.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        with open(self.log, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Broker:
    """`aserpc broker` on fresh ipc sockets, with its workers."""

    def __init__(self, directory: Optional[str] = None, binary: Optional[str] = None,
                 frontend: Optional[str] = None, backend: Optional[str] = None,
                 client_kwargs: Optional[dict] = None) -> None:
        self.dir = directory or short_dir()
        self.frontend = frontend or f"ipc://{self.dir}/f.ipc"
        self.backend = backend or f"ipc://{self.dir}/b.ipc"
        #: Passed to the helpers that poll the broker (CURVE keys of a tcp broker).
        self.client_kwargs = client_kwargs or {}
        self.bin = binary
        self.proc: Optional[Proc] = None
        self.workers: List[Proc] = []
        self._n = 0

    def start(self, timeout: float = 2.0, queue_timeout: float = 10.0, extra: Optional[List[str]] = None,
              argv: Optional[List[str]] = None) -> "Broker":
        given = argv
        argv = argv or [self.bin or aserpc_bin(), "broker", "--frontend", self.frontend, "--backend",
                        self.backend, "--timeout", str(timeout), "--queue-timeout", str(queue_timeout),
                        "--log-level", "DEBUG", *(extra or [])]
        env = None
        if given is not None:  # another program (aserpc 0.1.3's broker): our package must not shadow its own
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = Proc(argv, os.path.join(self.dir, "broker.log"), env=env)
        self.wait_ready()
        return self

    def wait_ready(self, deadline: float = 20.0) -> None:
        from aserpc import list_calculators

        end = time.monotonic() + deadline
        while True:
            try:
                list_calculators(self.frontend, timeout=300, **self.client_kwargs)
                return
            except Exception:
                if self.proc is not None and not self.proc.alive():
                    raise RuntimeError("broker exited:\n" + self.proc.output())
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def count(self, calc: str) -> int:
        from aserpc import list_calculators

        return list_calculators(self.frontend, timeout=2000, **self.client_kwargs).get(calc, 0)

    def worker(self, calc: str = "LJ", name: Optional[str] = None, registry: bool = False,
               heartbeat: float = 0.2, wait: bool = True, kind: Optional[str] = None,
               extra_env: Optional[dict] = None, extra: Optional[List[str]] = None) -> Proc:
        """Start a worker serving ``calc`` (a name in tests/calculators.py:CALCS when
        ``registry``) and wait until the broker lists it."""
        kind = kind or WORKER_KIND
        reg = ["--registry", f"{CALCULATORS}:CALCS"] if registry else []
        nm = ["--name", name] if name else []
        env = dict(os.environ, **(extra_env or {}))
        if kind == "ours":
            argv = [self.bin or aserpc_bin(), "worker", calc, *reg, *nm, "--broker", self.backend, "--heartbeat",
                    str(heartbeat), "--python", sys.executable, "--log-level", "DEBUG", *(extra or [])]
        else:
            argv = [os.path.join(reference_venv(), "bin", "aserpc"), "worker", calc, *reg, *nm,
                    "--broker", self.backend, "--heartbeat", str(heartbeat), "--log-level", "DEBUG"]
            env.pop("PYTHONPATH", None)  # our package must not shadow the reference's in its venv
        registered = name or calc
        before = self.count(registered) if wait else 0
        self._n += 1
        p = Proc(argv, os.path.join(self.dir, f"worker{self._n}-{uuid.uuid4().hex[:6]}.log"), env=env)
        self.workers.append(p)
        if wait:
            end = time.monotonic() + 60
            while self.count(registered) <= before:
                if not p.alive():
                    raise RuntimeError(f"worker exited:\n{p.output()}")
                if time.monotonic() > end:
                    raise TimeoutError(f"worker {registered} did not register:\n{p.output()}")
                time.sleep(0.05)
        return p

    def wait_count(self, calc: str, n: int, deadline: float = 10.0) -> None:
        end = time.monotonic() + deadline
        while self.count(calc) != n:
            if time.monotonic() > end:
                raise TimeoutError(f"{calc}: {self.count(calc)} workers, want {n}")
            time.sleep(0.05)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
