#!/usr/bin/env python3
"""Build aserpc's platform wheel: the Go binary as a script plus the Python client.

    python3 scripts/build_wheel.py [--out dist] [--binary PATH] [--plat manylinux_2_35_x86_64]

Layout (see the README's "Installing" section and shared/design/ecosystem.md fact 1):

    aserpc/...                                  the client package (clientpy/src/aserpc)
    aserpc-<ver>.data/scripts/aserpc            the Go binary, mode 0755 -> <env>/bin/aserpc
    aserpc-<ver>.dist-info/{METADATA,WHEEL,entry_points.txt,RECORD}

WHEEL says Root-Is-Purelib: false and the tag is py3-none-<plat>: any Python 3 (the binary
embeds whichever interpreter the environment has), one platform. Name, version, dependencies,
Python floor and entry points come from clientpy/pyproject.toml, so the wheel and a plain
`pip install clientpy/` agree. Stdlib only (tomllib: Python 3.11+, Debian 12's python3), so it
runs on a fresh machine with nothing from PyPI. The archive is reproducible: sorted entries
and fixed timestamps (SOURCE_DATE_EPOCH, default 1980-01-01).

The binary links libzmq dynamically (a system dependency, libzmq5); the script checks that its
glibc symbol versions fit the platform tag and prints the shared libraries it needs.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clientpy"

# Libraries a manylinux wheel may expect on the host (PEP 600 / auditwheel's policy).
MANYLINUX_LIBS = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libpthread.so.0", "libgcc_s.so.1",
    "libstdc++.so.6", "ld-linux-x86-64.so.2", "libutil.so.1", "libnsl.so.1", "libcrypt.so.1",
    "libX11.so.6", "libXext.so.6", "libXrender.so.1", "libICE.so.6", "libSM.so.6", "libGL.so.1",
    "libgobject-2.0.so.0", "libgthread-2.0.so.0", "libglib-2.0.so.0", "libexpat.so.1", "libz.so.1",
}


def project() -> dict:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        sys.exit("build_wheel.py needs Python 3.11+ (tomllib); Debian 12's python3 has it")
    with open(CLIENT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def metadata(p: dict) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
    ]
    lic = p.get("license", {})
    if isinstance(lic, dict) and lic.get("text"):
        lines.append(f"License: {lic['text']}")
    if p.get("requires-python"):
        lines.append(f"Requires-Python: {p['requires-python']}")
    for dep in p.get("dependencies", []):
        lines.append(f"Requires-Dist: {dep}")
    for extra, deps in sorted(p.get("optional-dependencies", {}).items()):
        lines.append(f"Provides-Extra: {extra}")
        for dep in deps:
            lines.append(f'Requires-Dist: {dep}; extra == "{extra}"')
    body = ""
    readme = p.get("readme")
    if isinstance(readme, str) and (CLIENT / readme).is_file():
        lines.append("Description-Content-Type: text/markdown")
        body = "\n" + (CLIENT / readme).read_text(encoding="utf-8")
    return "\n".join(lines) + "\n" + body


def entry_points(p: dict) -> str:
    out = []
    groups = dict(p.get("entry-points", {}))
    if p.get("scripts"):
        groups["console_scripts"] = p["scripts"]
    for group in sorted(groups):
        out.append(f"[{group}]")
        for name, target in sorted(groups[group].items()):
            out.append(f"{name} = {target}")
        out.append("")
    return "\n".join(out)


def build_binary(version: str, dest: Path) -> Path:
    exe = dest / "aserpc"
    env = dict(os.environ, CGO_ENABLED="1")
    cmd = ["go", "build", "-trimpath", "-ldflags", f"-s -w -X main.version={version}",
           "-o", str(exe), "./cmd/aserpc"]
    print("build_wheel:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return exe


def check_platform(exe: bytes, plat: str) -> None:
    """The binary's newest GLIBC_2.N symbol version must fit manylinux_2_M (N <= M)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_x86_64", plat)
    if not m:
        return
    want = int(m.group(1))
    found = [int(v) for v in re.findall(rb"GLIBC_2\.(\d+)", exe)]
    if found and max(found) > want:
        sys.exit(f"build_wheel: the binary needs GLIBC_2.{max(found)}, newer than {plat} allows")


def needed_libs(path: Path) -> list:
    if not shutil.which("readelf"):
        return []
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\).*\[(.+?)\]", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="directory for the wheel (default: dist/)")
    ap.add_argument("--binary", help="a prebuilt aserpc binary (default: go build ./cmd/aserpc)")
    ap.add_argument("--plat", default="manylinux_2_35_x86_64", help="platform tag")
    args = ap.parse_args()

    p = project()
    name, version = normalize(p["name"]), p["version"]
    tag = f"py3-none-{args.plat}"
    data_dir, info_dir = f"{name}-{version}.data", f"{name}-{version}.dist-info"

    with tempfile.TemporaryDirectory(prefix="aserpc-wheel-") as tmp:
        exe_path = Path(args.binary) if args.binary else build_binary(version, Path(tmp))
        exe = exe_path.read_bytes()
        check_platform(exe, args.plat)
        external = [lib for lib in needed_libs(exe_path) if lib not in MANYLINUX_LIBS]

    files = []  # (archive name, bytes, mode)
    pkg = CLIENT / "src" / "aserpc"
    for path in sorted(pkg.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        files.append((f"aserpc/{path.relative_to(pkg).as_posix()}", path.read_bytes(), 0o644))
    files.append((f"{data_dir}/scripts/aserpc", exe, 0o755))
    files.append((f"{info_dir}/METADATA", metadata(p).encode(), 0o644))
    files.append((f"{info_dir}/WHEEL", (
        "Wheel-Version: 1.0\n"
        "Generator: aserpc scripts/build_wheel.py\n"
        "Root-Is-Purelib: false\n"
        f"Tag: {tag}\n").encode(), 0o644))
    eps = entry_points(p)
    if eps:
        files.append((f"{info_dir}/entry_points.txt", eps.encode(), 0o644))

    record = io.StringIO()
    for arc, data, _ in files:
        record.write(f"{arc},{record_hash(data)},{len(data)}\n")
    record.write(f"{info_dir}/RECORD,,\n")
    files.append((f"{info_dir}/RECORD", record.getvalue().encode(), 0o644))

    epoch = max(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")), 315532800)
    stamp = time.gmtime(epoch)[:6]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{name}-{version}-{tag}.whl"
    partial = wheel.with_suffix(".whl.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data, mode in files:
            zi = zipfile.ZipInfo(arc, date_time=stamp)
            zi.external_attr = (0o100000 | mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    partial.replace(wheel)
    print(wheel)
    if external:
        print(f"build_wheel: the binary needs these system libraries (not bundled): {', '.join(external)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
