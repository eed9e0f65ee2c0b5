#!/usr/bin/env python3
"""Build aserpc's wheels: the Go binary as a script plus the Python client, one wheel per platform.

    python3 scripts/build_wheel.py [--out dist] [--target x86_64|aarch64|all] [--sdist]
    python3 scripts/build_wheel.py --dev [--out dist]          # a developer wheel, system libzmq
    python3 scripts/build_wheel.py --binary PATH --target T    # wrap a prebuilt portable binary

Layout (see the README's "Installing" section and shared/design/ecosystem.md fact 1):

    aserpc/...                                  the client package (clientpy/src/aserpc)
    aserpc-<ver>.data/scripts/aserpc            the Go binary, mode 0755 -> <env>/bin/aserpc
    aserpc-<ver>.dist-info/{METADATA,WHEEL,entry_points.txt,RECORD}

WHEEL says Root-Is-Purelib: false and the tags are py3-none-manylinux_2_17_<arch> and its legacy
alias manylinux2014_<arch>: any Python 3 (the binary embeds whichever interpreter the environment
has), any Linux with glibc >= 2.17 on that architecture. The binary is built by `go build` with
zig cc for <arch>-linux-gnu.2.17 and libzmq + libsodium linked statically
(scripts/toolchain.py); before packing, this script checks it as auditwheel would: the ELF
machine, no glibc symbol version newer than 2.17, and no shared library outside the manylinux2014
allow-list. The binary itself is kept next to the wheels as build/linux-<arch>/aserpc.

--dev builds with the host's C compiler and links the system's libzmq (fast, for development):
the wheel is tagged linux_<arch>, which no package index accepts.

--sdist writes aserpc-<ver>.tar.gz: a source distribution whose build fails at once with a
message naming the platforms that have wheels and how to build from source, so that `pip install
aserpc` on macOS or musl says so instead of falling back to an older release or failing deep in
a compiler.

Name, version, dependencies, Python floor and entry points come from clientpy/pyproject.toml, so
the wheel and a plain `pip install clientpy/` agree. Stdlib only (tomllib: Python 3.11+). The
archives are reproducible: sorted entries and fixed timestamps (SOURCE_DATE_EPOCH, default
1980-01-01).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clientpy"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import toolchain  # noqa: E402  (scripts/toolchain.py)

GLIBC_MAX = (2, 17)
# The shared libraries a manylinux2014 wheel may expect on the host (PEP 599; auditwheel's policy).
MANYLINUX2014_LIBS = {
    "libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libc.so.6",
    "libnsl.so.1", "libutil.so.1", "libpthread.so.0", "libresolv.so.2", "libX11.so.6", "libXext.so.6",
    "libXrender.so.1", "libICE.so.6", "libSM.so.6", "libGL.so.1", "libgobject-2.0.so.0",
    "libgthread-2.0.so.0", "libglib-2.0.so.0",
    # the dynamic loader, by architecture
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
}
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


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


def metadata(p: dict, version: str) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {version}",
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


def build_binary(version: str, exe: Path, target: str | None) -> Path:
    """go build ./cmd/aserpc into exe: portable for target, or a developer build (target None)."""
    env = dict(os.environ, CGO_ENABLED="1")
    if target:
        env.update(toolchain.go_env(target))
    exe.parent.mkdir(parents=True, exist_ok=True)
    ldflags = f"-s -w -X main.version={version}"
    if target:  # zig's linker keeps the C/C++ debug info that Go's -s leaves to the external linker
        ldflags += " -extldflags=-Wl,--strip-all"
    cmd = ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(exe), "./cmd/aserpc"]
    print(f"build_wheel: {' '.join(cmd)}  ({'linux-' + target if target else 'developer build'})", file=sys.stderr)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return exe


def elf_machine(data: bytes) -> int:
    if data[:4] != b"\x7fELF":
        sys.exit("build_wheel: the binary is not an ELF file")
    return int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")


def readelf(flag: str, path: Path) -> str:
    if not shutil.which("readelf"):
        sys.exit("build_wheel: readelf (binutils) is needed to check the binary")
    return subprocess.run(["readelf", flag, str(path)], capture_output=True, text=True, check=True).stdout


def glibc_versions(path: Path) -> list:
    """The GLIBC_2.N versions the binary's dynamic symbols need (readelf -V: version needs)."""
    return sorted({tuple(map(int, v.split("."))) for v in re.findall(r"Name: GLIBC_([0-9.]+)", readelf("-V", path))})


def needed_libs(path: Path) -> list:
    return re.findall(r"\(NEEDED\).*\[(.+?)\]", readelf("-d", path))


def check_portable(path: Path, target: str) -> None:
    """What auditwheel checks for manylinux_2_17 / manylinux2014, so a bad build fails here."""
    data = path.read_bytes()
    if elf_machine(data) != ELF_MACHINE[target]:
        sys.exit(f"build_wheel: {path} is not an {target} binary (ELF machine {elf_machine(data)})")
    versions = glibc_versions(path)
    if versions and versions[-1] > GLIBC_MAX:
        sys.exit(f"build_wheel: {path} needs GLIBC_{'.'.join(map(str, versions[-1]))}, "
                 f"newer than manylinux_2_17 allows")
    external = [lib for lib in needed_libs(path) if lib not in MANYLINUX2014_LIBS]
    if external:
        sys.exit(f"build_wheel: {path} needs shared libraries outside the manylinux2014 list: {', '.join(external)}")


def zip_files(path: Path, files: list, stamp: tuple) -> None:
    partial = path.with_suffix(path.suffix + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data, mode in files:
            zi = zipfile.ZipInfo(arc, date_time=stamp)
            zi.external_attr = (0o100000 | mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    partial.replace(path)


def write_wheel(p: dict, version: str, exe: bytes, tags: list, out: Path, stamp: tuple) -> Path:
    name = normalize(p["name"])
    data_dir, info_dir = f"{name}-{version}.data", f"{name}-{version}.dist-info"
    files = []  # (archive name, bytes, mode)
    pkg = CLIENT / "src" / "aserpc"
    for path in sorted(pkg.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        files.append((f"aserpc/{path.relative_to(pkg).as_posix()}", path.read_bytes(), 0o644))
    files.append((f"{data_dir}/scripts/aserpc", exe, 0o755))
    files.append((f"{info_dir}/METADATA", metadata(p, version).encode(), 0o644))
    files.append((f"{info_dir}/WHEEL", (
        "Wheel-Version: 1.0\n"
        "Generator: aserpc scripts/build_wheel.py\n"
        "Root-Is-Purelib: false\n" + "".join(f"Tag: py3-none-{t}\n" for t in tags)).encode(), 0o644))
    eps = entry_points(p)
    if eps:
        files.append((f"{info_dir}/entry_points.txt", eps.encode(), 0o644))

    record = io.StringIO()
    for arc, data, _ in files:
        record.write(f"{arc},{record_hash(data)},{len(data)}\n")
    record.write(f"{info_dir}/RECORD,,\n")
    files.append((f"{info_dir}/RECORD", record.getvalue().encode(), 0o644))

    wheel = out / f"{name}-{version}-py3-none-{'.'.join(tags)}.whl"
    for old in out.glob(f"{name}-*-py3-none-{'.'.join(tags)}.whl"):  # other versions' wheels for this platform
        old.unlink()
    zip_files(wheel, files, stamp)
    return wheel


# The build backend of the sdist: every hook fails with the same message (no compiler output).
NOBUILD = '''"""aserpc's sdist holds no buildable source: aserpc is a Go binary, shipped as platform wheels."""
import sys

MESSAGE = """
aserpc {version}: pip found no wheel for this machine ({platform}),
and this source archive cannot be built by pip.

Wheels exist for Linux with glibc 2.17 or newer (RHEL/CentOS 7 and later, Rocky/Alma 8 and 9,
Ubuntu 18.04+, Debian 10+): manylinux_2_17_x86_64 and manylinux_2_17_aarch64 (alias
manylinux2014; pip older than 19.3 cannot see them: `pip install -U pip` first).
musl (Alpine), macOS and Windows have no wheel yet.

To build aserpc from source you need Go >= 1.26, a C compiler and libzmq 4.x with its headers
(Homebrew: go zeromq pkg-config; Alpine: go build-base zeromq-dev). In a checkout of aserpc:
    python3 scripts/build_wheel.py --dev && pip install dist/aserpc-*-linux_*.whl   # Linux
    go build -o aserpc ./cmd/aserpc                                                  # any platform
The aserpc Python client alone (RemoteCalculator, talking to a broker elsewhere) is pure Python:
    pip install ase numpy pyzmq msgpack && pip install --no-deps ./clientpy
"""


def _fail(*_args, **_kwargs):
    import platform
    text = MESSAGE.format(version="{version}", platform=platform.platform())
    sys.stderr.write(text)
    raise SystemExit("aserpc: no wheel for this platform (see above)")


get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = _fail
get_requires_for_build_editable = prepare_metadata_for_build_editable = build_editable = _fail
'''


def write_sdist(p: dict, version: str, out: Path, epoch: int) -> Path:
    name = normalize(p["name"])
    base = f"{name}-{version}"
    pyproject = (
        "[build-system]\nrequires = []\nbuild-backend = \"aserpc_nobuild\"\nbackend-path = [\".\"]\n\n"
        f"[project]\nname = \"{p['name']}\"\nversion = \"{version}\"\n"
        f"description = \"{p.get('description', '')}\"\nrequires-python = \"{p.get('requires-python', '>=3.9')}\"\n")
    files = [
        (f"{base}/PKG-INFO", metadata(p, version).encode()),
        (f"{base}/pyproject.toml", pyproject.encode()),
        (f"{base}/aserpc_nobuild.py", NOBUILD.replace("{version}", version).encode()),
    ]
    sdist = out / f"{base}.tar.gz"
    for old in out.glob(f"{name}-*.tar.gz"):
        old.unlink()
    partial = sdist.with_suffix(".gz.partial")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for arc, data in files:
            ti = tarfile.TarInfo(arc)
            ti.size, ti.mtime, ti.mode = len(data), epoch, 0o644
            tar.addfile(ti, io.BytesIO(data))
    with open(partial, "wb") as f:
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=epoch) as gz:
            gz.write(raw.getvalue())
    partial.replace(sdist)
    return sdist


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "dist"), help="directory for the wheels (default: dist/)")
    ap.add_argument("--target", default="all", choices=[*toolchain.TARGETS, "all"],
                    help="architecture of the portable wheel (default: all)")
    ap.add_argument("--dev", action="store_true", help="a linux_<arch> wheel linked to the system's libzmq")
    ap.add_argument("--binary", help="a prebuilt binary for --target (checked, not rebuilt)")
    ap.add_argument("--sdist", action="store_true", help="also write the sdist that explains the platforms")
    args = ap.parse_args()

    p = project()
    version = p["version"]
    epoch = max(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")), 315532800)
    stamp = time.gmtime(epoch)[:6]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    built = []
    if args.dev:
        arch = os.uname().machine
        exe = build_binary(version, ROOT / "build" / "dev" / "aserpc", None) if not args.binary else Path(args.binary)
        built.append(write_wheel(p, version, exe.read_bytes(), [f"linux_{arch}"], out, stamp))
    else:
        targets = list(toolchain.TARGETS) if args.target == "all" else [args.target]
        if args.binary and len(targets) != 1:
            sys.exit("build_wheel: --binary needs one --target")
        for target in targets:
            exe = Path(args.binary) if args.binary else build_binary(
                version, ROOT / "build" / f"linux-{target}" / "aserpc", target)
            check_portable(exe, target)
            tags = [f"manylinux_2_17_{target}", f"manylinux2014_{target}"]
            built.append(write_wheel(p, version, exe.read_bytes(), tags, out, stamp))
    if args.sdist:
        built.append(write_sdist(p, version, out, epoch))
    for path in built:
        print(path)


if __name__ == "__main__":
    main()
