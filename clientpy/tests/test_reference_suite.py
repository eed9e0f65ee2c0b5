"""aserpc 0.1.3's own tests (from its PyPI sdist), run against our broker, worker and client.

What runs (spec §9): all of tests/test_integration.py with conftest.py replaced by
reference/conftest_shim.py (subprocess broker and workers; skips listed there with reasons);
tests/test_protocol.py without its pytest-benchmark benchmarks (they test our
aserpc.protocol, which keeps 0.1.3's functions); the SpawnConfig and registry tests of
tests/test_manager.py (its manager tests need `aserpc manager`, not written yet).

The sdist: $ASERPC_REFERENCE_SDIST (a .tar.gz or an extracted directory), else cached under
~/.cache/aserpc-test, else `pip download --no-binary :all: --no-deps aserpc==0.1.3`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

import procs

HERE = os.path.dirname(os.path.abspath(__file__))


def _sdist_tests() -> str:
    src = os.environ.get("ASERPC_REFERENCE_SDIST")
    cache = os.path.join(procs.cache_dir(), "aserpc-0.1.3-sdist")
    if not src:
        found = glob.glob(os.path.join(cache, "aserpc-0.1.3.tar.gz"))
        if not found:
            os.makedirs(cache, exist_ok=True)
            pip = [sys.executable, "-m", "pip"]
            try:
                pip = [os.path.join(procs.reference_venv(), "bin", "python"), "-m", "pip"]
            except procs.Unavailable:
                pass
            r = subprocess.run(pip + ["download", "-q", "--no-binary", ":all:", "--no-deps", "aserpc==0.1.3",
                                      "-d", cache], capture_output=True, text=True)
            found = glob.glob(os.path.join(cache, "aserpc-0.1.3.tar.gz"))
            if r.returncode != 0 or not found:
                pytest.skip(f"cannot download the aserpc 0.1.3 sdist: {r.stderr[-300:]}")
        src = found[0]
    if os.path.isdir(src):
        return os.path.join(src, "tests")
    out = os.path.join(os.path.dirname(src), "extracted")
    if not os.path.isdir(os.path.join(out, "aserpc-0.1.3", "tests")):
        with tarfile.open(src) as t:
            t.extractall(out)
    return os.path.join(out, "aserpc-0.1.3", "tests")


def test_reference_public_interface_tests(tmp_path, aserpc_bin):
    tests = _sdist_tests()
    shutil.copy(os.path.join(tests, "test_integration.py"), tmp_path)
    shutil.copy(os.path.join(tests, "test_protocol.py"), tmp_path)
    with open(os.path.join(tests, "test_manager.py")) as f:
        text = f.read()
    text = text[:text.index("# Manager fixture")]
    text = text.replace("from aserpc import Manager, RemoteCalculator, SpawnConfig",
                        "from aserpc import RemoteCalculator, SpawnConfig")
    (tmp_path / "test_manager_spawnconfig.py").write_text(text)
    shutil.copy(os.path.join(HERE, "reference", "conftest_shim.py"), tmp_path / "conftest.py")
    src = os.path.abspath(os.path.join(HERE, "..", "src"))
    env = dict(os.environ, ASERPC_BIN=aserpc_bin, ASERPC_CLIENTPY_TESTS=HERE,
               PYTHONPATH=os.pathsep.join([src, str(tmp_path)]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "not bench",
                        str(tmp_path)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    print(r.stdout[-6000:], r.stderr[-3000:])
    assert r.returncode == 0
    summary = r.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary
