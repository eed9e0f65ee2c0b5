// Package packaging holds the tests of aserpc's wheels (scripts/build_wheel.py
// and scripts/toolchain.py, `just wheel`; see docs/packaging.md): their
// contents; auditwheel's verdict and the binaries' ELF needs (manylinux_2_17,
// no library outside the manylinux2014 list); `pip install` and `uvx` of the
// wheel file and, on a machine with no libzmq, from a PEP 503 index served on
// 127.0.0.1 exactly as the README's lines read; the sdist's message; and the
// aarch64 wheel under qemu-user (a broker, a worker embedding an arm64 CPython,
// and the wire/auth/broker suites). It has no code of its own.
package packaging
