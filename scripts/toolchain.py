#!/usr/bin/env python3
"""The portable toolchain: a pinned zig, and libzmq + libsodium built statically from Debian's sources.

    python3 scripts/toolchain.py env TARGET     # print the `go build` environment for TARGET, building what is missing
    python3 scripts/toolchain.py libzmq TARGET  # build (or find) the static libzmq for TARGET, print its prefix

TARGET is x86_64 or aarch64. Everything lands in a cache ($ASERPC_BUILD_CACHE, default
~/.cache/aserpc-build), keyed by a hash of the recipe below, so a second run does nothing.

Why each choice (see the README's development notes for the measurements):

* **zig cc** (PyPI ``ziglang``, pinned by version and wheel hash) targets ``<arch>-linux-gnu.2.17``:
  it links against glibc 2.17 symbol stubs and its own static libc++, so the binary runs on any
  glibc >= 2.17 (RHEL/CentOS 7 and later) without an old distribution to build on, and
  cross-compiles for aarch64 from x86_64. The binary stays a dynamically linked glibc executable:
  the worker ``dlopen``s whichever environment's libpython it serves from, which a static (musl)
  binary cannot do.
* **libzmq 4.3.4 and libsodium 1.0.18** from Debian bookworm's source packages, pinned by Debian
  version and by the SHA-256 of every source file (``apt-get source --download-only`` needs a
  ``deb-src`` entry; ``scripts/bootstrap.sh`` adds one), with Debian's patches (libsodium's
  CVE-2025-69277 fix among them). Only what aserpc uses: tcp/ipc/inproc and CURVE; no GSSAPI,
  PGM, NORM, VMCI, WebSocket or draft APIs.
* **libsodium, not libzmq's built-in tweetnacl**, for CURVE: tweetnacl is the reference
  implementation (compact, not fast: per-message encryption is the cost of every tcp+CURVE
  request, and requests carry megabytes of positions and forces), and libzmq itself recommends
  libsodium; pyzmq's wheels ship libsodium too.

Stdlib only. Needs cmake, make, autoconf, automake and libtool (Debian packages; bootstrap.sh
installs them), dpkg-source and apt-get (for the sources).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ZIG_VERSION = "0.17.1"
# ziglang's wheels on PyPI for the machines that build aserpc (x86_64 and aarch64 Linux).
ZIG_WHEEL_SHA256 = [
    "ea6cc5d87b033cf0aedfbc8f9549a908cae6c50ac31f1698188fa48a74524b54",  # manylinux_2_12_x86_64
    "b7c5f02fccd40f89b999ee16a1f5ddced56e6182370f8affe494bcf8a28cf07e",  # manylinux_2_17_aarch64
]
GLIBC = "2.17"

# Debian bookworm source packages: (source package, Debian version, {file: sha256}).
SOURCES = {
    "libsodium": ("libsodium", "1.0.18-1+deb12u1", {
        "libsodium_1.0.18-1+deb12u1.dsc": "2c23c57b5a9385dab5a1916014c9b5f2cdd7dadeb8a35b28c1bfb603ce7095c4",
        "libsodium_1.0.18.orig.tar.gz": "d59323c6b712a1519a5daf710b68f5e7fde57040845ffec53850911f10a5d4f4",
        "libsodium_1.0.18-1+deb12u1.debian.tar.xz": "f410474e46346b06b162defa05b1be26906aeed6cf309e3d4ebe30b4d1350733",
    }),
    "libzmq": ("zeromq3", "4.3.4-6", {
        "zeromq3_4.3.4-6.dsc": "dfc0e1a03950bff1891b60de3eb41605e9d1d804af063e4b565602165be8c3fe",
        "zeromq3_4.3.4.orig.tar.gz": "0ff5a531c9ffaf0dfdc7dc78d13d1383088f454896d252934c429b2554d10559",
        "zeromq3_4.3.4-6.debian.tar.xz": "fbb0dcb4ffbf483d416d9af722db74ad4edd7004625ce10381e8cd3a71b6cd58",
    }),
}

SODIUM_CONFIGURE = ["--disable-shared", "--enable-static", "--with-pic", "--disable-dependency-tracking",
                    "--disable-debug", "--disable-pie"]
ZMQ_CMAKE = [
    "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
    "-DBUILD_SHARED=OFF", "-DBUILD_STATIC=ON", "-DBUILD_TESTS=OFF",
    "-DENABLE_CURVE=ON", "-DWITH_LIBSODIUM=ON", "-DWITH_LIBSODIUM_STATIC=ON",
    # Drafts for ZMQ_ROUTER_NOTIFY only (the broker learns at once that a worker's connection
    # closed); the draft transports and the radix tree stay off, so what is built is 4.3.4's
    # stable code plus that option.
    "-DENABLE_DRAFTS=ON", "-DENABLE_WS=OFF", "-DWITH_TLS=OFF", "-DENABLE_RADIX_TREE=OFF", "-DWITH_OPENPGM=OFF", "-DWITH_NORM=OFF", "-DWITH_VMCI=OFF",
    "-DWITH_DOCS=OFF", "-DWITH_PERF_TOOL=OFF", "-DENABLE_CPACK=OFF", "-DPOLLER=epoll",
]
# What cgo links: libzmq, libsodium and zig's static libc++ (no libstdc++.so at run time).
ZMQ_LIBS = "-L${libdir} -lzmq -lsodium -lc++ -lpthread"

TARGETS = {"x86_64": "amd64", "aarch64": "arm64"}  # zig's arch -> GOARCH


def cache_dir() -> Path:
    base = os.environ.get("ASERPC_BUILD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "aserpc-build")
    return Path(base)


def log(msg: str) -> None:
    print(f"toolchain: {msg}", file=sys.stderr, flush=True)


def sh(cmd: list, **kw) -> None:
    """Runs cmd; on failure prints its output (kept in a log file, not the terminal) and exits."""
    logf = kw.pop("logfile")
    with open(logf, "ab") as f:
        f.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if r.returncode != 0:
        tail = Path(logf).read_text(errors="replace").splitlines()[-40:]
        sys.exit(f"toolchain: {' '.join(map(str, cmd[:3]))} ... failed ({r.returncode}); "
                 f"last lines of {logf}:\n" + "\n".join(tail))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def install_atomically(final: Path, build) -> Path:
    """Runs build(tmpdir) and renames tmpdir to final; a half-built directory is never used."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:  # a concurrent build finished first
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- zig -------------------------------------------------------------------------------------

def zig() -> Path:
    """The pinned zig binary, installed from PyPI into the cache on first use."""
    def build(tmp: Path) -> None:
        log(f"installing ziglang=={ZIG_VERSION} from PyPI (about 100 MB, once)")
        req = tmp / "requirements.txt"
        req.write_text(f"ziglang=={ZIG_VERSION} " + " ".join(f"--hash=sha256:{h}" for h in ZIG_WHEEL_SHA256) + "\n")
        # A throwaway venv for pip: Debian's python3 has none of its own (python3-venv brings it).
        sh([sys.executable, "-m", "venv", str(tmp / "venv")], logfile=tmp / "install.log")
        sh([str(tmp / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--require-hashes", "--only-binary", ":all:", "--target", str(tmp / "site"), "-r", str(req)],
           logfile=tmp / "install.log")
        shutil.rmtree(tmp / "venv")
    root = install_atomically(cache_dir() / f"zig-{ZIG_VERSION}", build)
    exe = root / "site" / "ziglang" / "zig"
    if not exe.is_file():
        sys.exit(f"toolchain: {exe} missing; remove {root} and retry")
    return exe


def wrappers(target: str) -> dict:
    """CC, CXX, AR and RANLIB for target: scripts that run zig (cmake and Go want one path each)."""
    exe = zig()
    d = cache_dir() / f"zig-{ZIG_VERSION}" / "bin"
    d.mkdir(parents=True, exist_ok=True)
    tools = {}
    for var, args in (("CC", f"cc -target {target}-linux-gnu.{GLIBC}"),
                      ("CXX", f"c++ -target {target}-linux-gnu.{GLIBC}"),
                      ("AR", "ar"), ("RANLIB", "ranlib")):
        name = f"{target}-{var.lower()}" if var in ("CC", "CXX") else var.lower()
        path = d / name
        body = (f'#!/bin/sh\n# zig {ZIG_VERSION} for aserpc (scripts/toolchain.py)\n'
                f'export ZIG_GLOBAL_CACHE_DIR="${{ZIG_GLOBAL_CACHE_DIR:-{cache_dir() / "zig-cache"}}}"\n'
                f'exec "{exe}" {args} "$@"\n')
        if not path.is_file() or path.read_text() != body:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(body)
            tmp.chmod(0o755)
            tmp.replace(path)
        tools[var] = str(path)
    return tools


# --- sources ---------------------------------------------------------------------------------

def source(lib: str) -> Path:
    """Debian's source package for lib, downloaded once, checked against the pinned hashes,
    unpacked with Debian's patches applied."""
    pkg, version, files = SOURCES[lib]

    def build(tmp: Path) -> None:
        dl = tmp / "dl"
        dl.mkdir()
        log(f"apt-get source --download-only {pkg}={version}")
        r = subprocess.run(["apt-get", "source", "--download-only", f"{pkg}={version}"], cwd=dl,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"toolchain: apt-get source {pkg}={version} failed:\n{r.stderr.strip()}\n"
                     "It needs a deb-src entry for Debian bookworm (scripts/bootstrap.sh adds "
                     "/etc/apt/sources.list.d/aserpc-src.sources) and `apt-get update`.")
        for name, want in files.items():
            got = sha256(dl / name) if (dl / name).is_file() else "missing"
            if got != want:
                sys.exit(f"toolchain: {name}: sha256 {got}, pinned {want}")
        dsc = next(n for n in files if n.endswith(".dsc"))
        # The hashes above pin every file, so dpkg-source need not check signatures.
        sh(["dpkg-source", "--no-check", "-x", str(dl / dsc), str(tmp / "src")], logfile=tmp / "unpack.log")
    return install_atomically(cache_dir() / "src" / f"{pkg}-{version}", build) / "src"


# --- libraries -------------------------------------------------------------------------------

def recipe_key(target: str) -> str:
    recipe = {"zig": ZIG_VERSION, "glibc": GLIBC, "target": target, "sources": SOURCES,
              "sodium": SODIUM_CONFIGURE, "zmq": ZMQ_CMAKE, "libs": ZMQ_LIBS, "rev": 3}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def libzmq(target: str) -> Path:
    """Static libsodium and libzmq for target under one prefix with lib/pkgconfig/libzmq.pc."""
    if target not in TARGETS:
        sys.exit(f"toolchain: unknown target {target!r} (have: {', '.join(TARGETS)})")
    final = cache_dir() / f"libzmq-4.3.4-{target}-{recipe_key(target)}"
    if final.is_dir():
        return final
    tools = wrappers(target)
    sodium_src, zmq_src = source("libsodium"), source("libzmq")
    for tool in ("cmake", "make", "autoreconf", "libtoolize"):
        if not shutil.which(tool):
            sys.exit(f"toolchain: {tool} not found (apt-get install cmake make autoconf automake libtool)")

    def build(prefix: Path) -> None:
        work = Path(tempfile.mkdtemp(prefix=f"aserpc-libzmq-{target}-"))
        logf = prefix / "build.log"
        env = dict(os.environ, **tools)
        try:
            log(f"building libsodium for {target}-linux-gnu.{GLIBC} (a minute or two; log {final}/build.log)")
            src = work / "sodium-src"
            shutil.copytree(sodium_src, src, symlinks=True)
            sh(["autoreconf", "-fi"], cwd=src, env=env, logfile=logf)  # Debian's tarball has no configure
            # Source paths reach the binary through __FILE__ (assertions): map them to fixed names,
            # so the same recipe gives the same bytes wherever the cache is. -O2 is spelled out
            # because setting CFLAGS drops configure's default, and zig cc without -O builds debug
            # code with UBSan traps.
            sodium_env = dict(env, CFLAGS=f"-O2 -ffile-prefix-map={src}=libsodium-1.0.18")
            sh([str(src / "configure"), f"--host={target}-linux-gnu", f"--prefix={prefix}", *SODIUM_CONFIGURE],
               cwd=src, env=sodium_env, logfile=logf)
            sh(["make", f"-j{os.cpu_count() or 2}"], cwd=src, env=sodium_env, logfile=logf)
            sh(["make", "install"], cwd=src, env=sodium_env, logfile=logf)

            log(f"building libzmq for {target}-linux-gnu.{GLIBC} (two minutes or so)")
            bdir = work / "zmq-build"
            bdir.mkdir()
            cross = []
            if target != os.uname().machine:
                cross = [f"-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={target}"]
            sh(["cmake", str(zmq_src), f"-DCMAKE_C_COMPILER={tools['CC']}", f"-DCMAKE_CXX_COMPILER={tools['CXX']}",
                f"-DCMAKE_AR={tools['AR']}", f"-DCMAKE_RANLIB={tools['RANLIB']}",
                f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DCMAKE_PREFIX_PATH={prefix}",
                "-DCMAKE_INSTALL_LIBDIR=lib", *cross, *ZMQ_CMAKE,
                f"-DCMAKE_C_FLAGS=-ffile-prefix-map={zmq_src}=zeromq-4.3.4 -ffile-prefix-map={bdir}=build",
                f"-DCMAKE_CXX_FLAGS=-ffile-prefix-map={zmq_src}=zeromq-4.3.4 -ffile-prefix-map={bdir}=build"],
               cwd=bdir, env=dict(env, PKG_CONFIG_LIBDIR=str(prefix / "lib" / "pkgconfig"),
                                  PKG_CONFIG_PATH=""), logfile=logf)
            config = (bdir / "platform.hpp").read_text()
            if "#define ZMQ_USE_LIBSODIUM" not in config or "#define ZMQ_HAVE_CURVE" not in config:
                sys.exit(f"toolchain: libzmq was configured without libsodium CURVE; see {logf}")
            sh(["make", f"-j{os.cpu_count() or 2}"], cwd=bdir, env=env, logfile=logf)
            sh(["make", "install"], cwd=bdir, env=env, logfile=logf)

            # cgo runs `pkg-config --cflags --libs libzmq`: this one links everything statically.
            pc = prefix / "lib" / "pkgconfig" / "libzmq.pc"
            pc.write_text(
                f"prefix={prefix}\nlibdir=${{prefix}}/lib\nincludedir=${{prefix}}/include\n\n"
                "Name: libzmq\n"
                f"Description: libzmq 4.3.4 + libsodium 1.0.18, static, for {target}-linux-gnu.{GLIBC} (aserpc)\n"
                f"Version: 4.3.4\nLibs: {ZMQ_LIBS}\nCflags: -I${{includedir}} -DZMQ_STATIC\n")
            for p in (prefix / "lib").glob("*.la"):
                p.unlink()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # The prefix is baked into the .pc file, so build in place under a temporary name and move
    # only the finished tree: install_atomically's rename would break the paths.
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    pc = tmp / "lib" / "pkgconfig" / "libzmq.pc"
    pc.write_text(pc.read_text().replace(str(tmp), str(final)))
    tmp.rename(final)
    log(f"libzmq for {target}: {final}")
    return final


def go_env(target: str) -> dict:
    """The environment under which `go build` links the static libzmq for target."""
    prefix = libzmq(target)
    tools = wrappers(target)
    pcdir = str(prefix / "lib" / "pkgconfig")
    return {
        "CGO_ENABLED": "1", "GOOS": "linux", "GOARCH": TARGETS[target],
        "CC": tools["CC"], "CXX": tools["CXX"],
        # Go's build cache does not notice a changed C library behind pkg-config: a cgo package
        # compiled against another libzmq build would be reused, with its link flags pointing
        # there. CGO_CFLAGS is part of the cache key, so naming this build's include directory
        # in it ties every cgo package to this libzmq.
        "CGO_CFLAGS": f"-O2 -g -I{prefix / 'include'}",
        # Only this libzmq.pc: never the system's, whatever PKG_CONFIG_PATH says.
        "PKG_CONFIG_LIBDIR": pcdir, "PKG_CONFIG_PATH": pcdir,
        "ZIG_GLOBAL_CACHE_DIR": str(cache_dir() / "zig-cache"),
    }


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("env", "libzmq"):
        sys.exit(__doc__.split("\n\n")[1])
    what, target = sys.argv[1:]
    if what == "libzmq":
        print(libzmq(target))
    else:
        for k, v in go_env(target).items():
            print(f"export {k}={v}")


if __name__ == "__main__":
    main()
