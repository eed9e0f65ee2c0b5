// Package e2e holds end-to-end tests of `aserpc worker` and `aserpc list`:
// the real binary (built once by TestMain), our broker and worker as
// processes, calculators from Debian's python3 (python3-ase, python3-numpy),
// from venvs built by the tests (internal/testenv), and the reference
// aserpc 0.1.3 client from PyPI. It follows issue 4 and
// reference-behaviour.md §4 and §7.
//
// Every process runs in its own process group and is killed when its test
// ends; endpoints are ipc sockets under a short os.MkdirTemp directory.
//
// The machine-learning potential test (mlip_test.go) is opt-in:
// ASERPC_TEST_MLIP=1 builds a venv with CPU torch and CHGNet from PyPI
// (about 3 GB) and serves CHGNet's bundled pretrained model offline.
package e2e
