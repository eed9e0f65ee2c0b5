# Every routine task of aserpc. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

bin := "bin/aserpc"
version := `git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev`

# Build the aserpc binary into bin/.
build:
    go build -trimpath -ldflags "-X main.version={{version}}" -o {{bin}} ./cmd/aserpc

# (aserpc-<ver>-py3-none-manylinux_2_17_<arch>.manylinux2014_<arch>.whl: the portable binary — zig cc
# for glibc 2.17, libzmq and libsodium static, scripts/toolchain.py, cached — plus the Python client;
# the binaries stay in build/linux-<arch>/aserpc. See docs/packaging.md.)
# The wheels for x86_64 and aarch64 (or one: `just wheel x86_64`) and the sdist, in dist/.
wheel target="all":
    python3 scripts/build_wheel.py --target {{target}} --sdist

# A developer wheel (host compiler, the system's libzmq; tagged linux_<arch>, for no index).
wheel-dev:
    python3 scripts/build_wheel.py --dev

# Build (once, cached) the static libzmq + libsodium for a target and print where it is.
libzmq target="x86_64":
    python3 scripts/toolchain.py libzmq {{target}}

# (With docker, podman or buildah, whichever is installed; the base image installs the wheel from dist/,
# each model image is FROM aserpc-base plus its pip install. BASE_IMAGE=... picks another Python base.)
# Build the images: aserpc-base, then aserpc-<model> for each of models.
images models="chgnet mace fairchem cuda": (wheel "x86_64")
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v docker >/dev/null; then b=(docker build)
    elif command -v podman >/dev/null; then b=(podman build)
    elif command -v buildah >/dev/null; then b=(buildah bud --isolation chroot --network host --format docker)
    else echo "images: no docker, podman or buildah" >&2; exit 1; fi
    base_arg=(); if [ -n "${BASE_IMAGE:-}" ]; then base_arg=(--build-arg "BASE_IMAGE=$BASE_IMAGE"); fi
    "${b[@]}" "${base_arg[@]}" -f docker/base/Dockerfile -t aserpc-base .
    for m in {{models}}; do "${b[@]}" -f "docker/$m/Dockerfile" -t "aserpc-$m" .; done

# (buildah on a Debian base made here; part of `just test`.)
# Build aserpc-base and run it: a worker container serving a client on the host, health check, user, SIGTERM.
test-images: (wheel "x86_64")
    ASERPC_TEST_BIN="$PWD/build/linux-x86_64/aserpc" go test -count=1 -run TestImages -v ./docker

# (Pulls torch from PyPI, several GB, once per build: opt-in.)
# test-images, then build aserpc-chgnet on it and serve CHGNet from it to a client on the host.
test-images-mlip: (wheel "x86_64")
    ASERPC_TEST_IMAGES_MLIP=1 ASERPC_TEST_BIN="$PWD/build/linux-x86_64/aserpc" go test -count=1 -timeout 60m -run TestImages -v ./docker

# Lint docker/*/Dockerfile with BuildKit's own linter, offline (a separate Go module), and check compose.yaml.
lint-docker:
    cd docker/lint && go vet ./... && go test -count=1 ./...

# (Go packages run one at a time, -p 1: many start real processes with
# timing assumptions that parallel packages on two cores would stretch.)
# Every process-level suite (e2e, interop, spawn, chaos, the Python client's) runs the portable
# binary that the x86_64 wheel carries, so what users install is what the tests test.
# Run every test (what CI runs): vet, gofmt, Dockerfile lint, the wheels, Go tests, Python client tests, a short fuzz run.
test: lint lint-docker wheel
    ASERPC_TEST_BIN="$PWD/build/linux-x86_64/aserpc" ASERPC_TEST_DIST="$PWD/dist" go test -count=1 -p 1 -timeout 45m ./...
    ASERPC_BIN="$PWD/build/linux-x86_64/aserpc" PYTHONPATH=clientpy/src /usr/bin/python3 -m pytest -q clientpy/tests
    just fuzz 300000x

# (CHGNet served and compared with in-process; CHGNet and a random MACE batched on mixed structures,
# compared with their single-structure results. CPU torch from PyPI; ~6 GB venvs, built once.)
# Real machine-learning potentials.
test-mlip:
    ASERPC_TEST_MLIP=1 go test -count=1 -timeout 45m -run TestMLIP ./e2e -v

# (Python 3.9 + ASE 3.22 + numpy 1.x, 3.13 + newest ASE + numpy 2, Debian unstable's 3.14 and 3.15 in a
# chroot; part of `just test`. docs/fidelity.md.)
# The drop-in contract suite on the oldest and newest Python, ASE and numpy.
test-versions: (wheel "x86_64")
    ASERPC_TEST_BIN="$PWD/build/linux-x86_64/aserpc" go test -count=1 -run TestDropinVersions -v ./e2e

# The Python client's tests against 0.1.3's worker from PyPI instead of ours.
test-client-reference: build
    ASERPC_TEST_WORKER=reference ASERPC_BIN="$PWD/{{bin}}" PYTHONPATH=clientpy/src /usr/bin/python3 -m pytest -q clientpy/tests

# go vet and gofmt.
lint:
    go vet ./...
    @out="$(gofmt -l $(git ls-files '*.go'))"; if [ -n "$out" ]; then echo "gofmt needed:"; echo "$out"; exit 1; fi

# Fuzz every parser for the given budget each: a count of inputs (`300000x`,
# ~10 s here) or a time (`30s`). Counts are the default because Go 1.26's
# fuzz coordinator can report a bare "context deadline exceeded" failure
# when a time budget ends mid-input under CPU load (golang/go#75804, fixed
# in 1.27); a real finding always writes testdata/fuzz/<target>/<input>.
fuzz time="1000000x":
    #!/usr/bin/env bash
    set -euo pipefail
    for pkg in ./wire ./broker; do
      for f in $(go test -list '^Fuzz' $pkg | grep '^Fuzz'); do
        echo "fuzz $pkg $f ({{time}})"
        go test -run '^$' -fuzz "^$f\$" -fuzztime {{time}} $pkg
      done
    done

# (A worker SIGKILLed every 0.5–2 s during the requests, then the broker SIGKILLed and
# restarted under load; `go test ./internal/chaos` runs short versions of both.)
# Chaos: 0 lost and 0 wrong results while workers and the broker die; latencies printed.
chaos requests="10000":
    go run ./internal/chaos kill -requests {{requests}}
    go run ./internal/chaos restart

# (Random and malformed messages at both broker sockets and, as malformed LJ requests, at real
# workers while valid traffic flows; `go test ./internal/chaos` runs 15 s of it.)
# Live fuzzing: the broker stays up, valid requests stay right, broker RSS stays bounded.
fuzz-live duration="60s":
    go run ./internal/chaos fuzz -duration {{duration}}

# All benchmarks.
bench: bench-broker bench-worker bench-manager bench-pyhost bench-client bench-batch bench-placement bench-stateful
    go test -run '^$' -bench . -benchtime 2s ./wire

# (Debian's gpaw, LCAO dzp; fresh workers per run. ASERPC_STATEFUL_STEPS: MD steps, default 6 in the test.)
# A stateful DFT code (GPAW) behind two workers: SCF iterations and wall time of one H2O MD run in process, with a session, with affinity, with neither.
bench-stateful: build
    ASERPC_STATEFUL_STEPS=30 ASERPC_BIN="$PWD/{{bin}}" PYTHONPATH=clientpy/src /usr/bin/python3 -m pytest -q -s clientpy/tests/test_stateful_dft.py

# Embedding Python: call, hand-off, 100k atoms, H2O LJ vs plain python.
bench-pyhost:
    go test -run '^$' -bench . -benchtime 2s ./pyhost

# (The wheel's binary, with the developer build on the system's libzmq in the same alternating rounds.)
# An H2O MD step through RemoteCalculator vs SocketIOCalculator vs in-process.
bench-client: build (wheel "x86_64")
    ASERPC_BIN="$PWD/build/linux-x86_64/aserpc" PYTHONPATH=clientpy/src /usr/bin/python3 bench/client/bench_md.py --steps 1000 --rounds 6 --compare-bin "$PWD/{{bin}}"

# (Built twice — static zig-built libzmq as in the wheels, and the system's libzmq with gcc — and
# run in alternating rounds; the last table gives static / system per measurement.)
# Broker round trip and throughput vs libzmq's bare zmq_proxy, side by side.
bench-broker:
    mkdir -p build/bench
    go build -o build/bench/benchbroker-system ./bench/broker
    eval "$(python3 scripts/toolchain.py env x86_64)" && go build -o build/bench/benchbroker-static ./bench/broker
    python3 bench/compare_builds.py --rounds 2 --columns "zmq_proxy,aserpc broker" static=build/bench/benchbroker-static system=build/bench/benchbroker-system

# H2O LJ through broker + worker vs the broker's echo path vs in-process python.
bench-worker:
    go run ./bench/worker

# Cold start through the manager vs starting the same worker by hand.
bench-manager:
    go run ./bench/manager

# (Builds the CHGNet + mace-torch venv once; minutes per model on 2 cores. Arguments go to
# bench/batch/bench_batch.py: --models chgnet,mace --sizes 8,64 --batches 2,4,8,16,32.)
# (Root, Debian's slurm-wlm and munge; state in DIR. Prints the SLURM_CONF to export.)
# Start a one-node SLURM cluster on this machine (what the SLURM tests use).
slurm-up dir="/tmp/aserpc-slurm":
    bash scripts/slurm-up.sh {{dir}}

# Stop the cluster slurm-up started (cancels its jobs first).
slurm-down dir="/tmp/aserpc-slurm":
    bash scripts/slurm-down.sh {{dir}}

# (Issue 22: CHGNet on 64-atom Si cells — in process, 1 and 2 workers through the manager with its
# default CPU placement, 2 workers started by hand with the default environment. Same venv.)
# CPU workers sharing a node: structures/s with and without placement, side by side.
bench-placement: build
    ASERPC_BIN="$PWD/{{bin}}" PYTHONPATH=clientpy/src go run ./bench/batch --placement

# Dynamic batching: structures/s in process vs one by one vs batched, side by side.
bench-batch *args: build
    ASERPC_BIN="$PWD/{{bin}}" PYTHONPATH=clientpy/src go run ./bench/batch {{args}}

# The main job: a broker, a worker and a client computing something real.
demo: build
    ./scripts/demo.sh
