// Package interop holds interoperability tests of our aserpc against the
// reference, aserpc 0.1.3 from PyPI, installed in a venv of its own
// (internal/testenv): the reference's RemoteCalculator and helpers against
// our broker, and its worker and manager registering with our broker. The
// tests start real processes (our binary, the reference's CLI and Python)
// and compare results with ASE run in-process, bit for bit.
//
// They follow ../shared/spec/reference-behaviour.md §2 (wire), §3 (broker),
// §5 (client), §6 (manager) and §9 (the reference's own tests, re-run here
// against our broker). They skip only when pyenv's Python 3.11 is absent.
package interop
