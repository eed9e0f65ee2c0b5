"""H2O MD step: RemoteCalculator (through `aserpc broker` + `aserpc worker`) vs ASE's
SocketIOCalculator (i-PI protocol, same LennardJones, unix socket and tcp) vs in-process, and
the yardstick of the target: a bare two-hop zmq round trip (pyzmq REQ -> libzmq's zmq_proxy in
its own process -> pyzmq REP echo), timed in a tight loop and inside the same MD step.

Run:  PYTHONPATH=clientpy/src /usr/bin/python3 bench/client/bench_md.py [--steps 1000] [--rounds 6]
(ASERPC_BIN: the aserpc binary, default built with go build; the worker serves from this Python.)

Each variant runs VelocityVerlet on one H2O molecule with LennardJones; a step is one force
call. Rounds cycle through the variants and each reports its best round (a shared machine is
noisy), with the overhead over in-process. A last line splits our client's own share: encode + decode + ASE bookkeeping,
measured with the network exchange replaced by a canned reply. A last traced run (ASERPC_TRACE,
see internal/trace) says where the remote step's time goes, stage by stage.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import os
import shutil
import statistics
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq
from ase import units
from ase.build import molecule
from ase.calculators.calculator import Calculator
from ase.calculators.lj import LennardJones
from ase.md.verlet import VelocityVerlet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clientpy", "tests"))
import procs  # noqa: E402

from aserpc import RemoteCalculator, protocol  # noqa: E402
from aserpc._transport import Message  # noqa: E402


def water():
    a = molecule("H2O")
    a.set_momenta(np.zeros((3, 3)))
    return a


def per_step(calc, steps):
    a = water()
    a.calc = calc
    dyn = VelocityVerlet(a, 0.1 * units.fs, logfile=None)
    dyn.run(20)  # warm up (connections, caches)
    t = time.perf_counter()
    dyn.run(steps)
    return (time.perf_counter() - t) / steps


def best(make, steps, rounds):
    out = []
    for _ in range(rounds):
        calc = make()
        try:
            out.append(per_step(calc, steps))
        finally:
            close = getattr(calc, "close", None)
            if close:
                close()
    return min(out)


CLIENT = """
import sys
from ase.build import molecule
from ase.calculators.lj import LennardJones
from ase.calculators.socketio import SocketClient
port, unix = sys.argv[1], sys.argv[2]
a = molecule("H2O"); a.calc = LennardJones()
c = SocketClient(port=int(port) if port != "-" else None, unixsocket=unix if unix != "-" else None)
c.run(a)
"""


def socketio(unix: bool):
    from ase.calculators.socketio import SocketIOCalculator

    def launch(atoms, properties, port, unixsocket):
        return subprocess.Popen([sys.executable, "-c", CLIENT, str(port) if port else "-",
                                 unixsocket or "-"])

    if unix:
        return SocketIOCalculator(unixsocket=f"aserpc-bench-{os.getpid()}", launch_client=launch)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return SocketIOCalculator(port=port, launch_client=launch)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def lj_results():
    ref = water()
    ref.calc = LennardJones()
    return ref.get_potential_energy(), ref.get_forces()


class Free(Calculator):
    """A zero-cost calculator: LennardJones' results for H2O, whatever the positions."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, e, f):
        super().__init__()
        self.e, self.f = e, f

    def calculate(self, atoms=None, properties=None, system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": self.e, "forces": self.f.copy()}


class Bare(Free):
    """Free, plus a bare two-hop round trip of a request-sized message per calculation."""

    def __init__(self, ctx, address, size, e, f):
        super().__init__(e, f)
        self.s = ctx.socket(zmq.REQ)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(address)
        self.msg = os.urandom(size)

    def round_trip(self):
        self.s.send(self.msg)
        self.s.recv()

    def calculate(self, atoms=None, properties=None, system_changes=()):
        self.round_trip()
        super().calculate(atoms, properties, system_changes)

    def close(self):
        self.s.close()


PROXY = """
import sys, zmq
c = zmq.Context(); f = c.socket(zmq.ROUTER); f.bind(sys.argv[1]); b = c.socket(zmq.DEALER); b.bind(sys.argv[2])
zmq.proxy(f, b)
"""
ECHO = """
import sys, zmq
s = zmq.Context().socket(zmq.REP); s.connect(sys.argv[1])
while True:
    s.send(s.recv())
"""


class BareTwoHop:
    """libzmq's zmq_proxy in a process of its own between pyzmq REQ clients and a pyzmq REP
    echo in another: the yardstick of the target, with a message the size of our H2O request."""

    def __init__(self, tcp):
        if tcp:
            self.fe, be = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        else:
            d = tempfile.mkdtemp(prefix="aserpc-bare-")
            self.fe, be = f"ipc://{d}/f", f"ipc://{d}/b"
        self.procs = [subprocess.Popen([sys.executable, "-c", PROXY, self.fe, be]),
                      subprocess.Popen([sys.executable, "-c", ECHO, be])]
        self.ctx = zmq.Context()
        self.size = len(protocol.pack_request(water(), ["energy", "forces"]))

    def calculator(self, e, f):
        return Bare(self.ctx, self.fe, self.size, e, f)

    def tight(self, n, rounds):
        """Best mean round trip of n back to back."""
        c = self.calculator(0.0, None)
        try:
            for _ in range(200):  # connected and warm
                c.round_trip()
            out = []
            for _ in range(rounds):
                t = time.perf_counter()
                for _ in range(n):
                    c.round_trip()
                out.append((time.perf_counter() - t) / n)
            return min(out)
        finally:
            c.close()

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.ctx.destroy(linger=0)


def canned(e, f):
    """Our client with the exchange replaced by an instant canned reply: with the zero-cost
    calculator's step, our client's own cost (encode, decode, ASE bookkeeping)."""
    reply = protocol.pack_response({"energy": e, "forces": f})

    class Canned:
        def exchange(self, cmd, args, waiter):
            return Message(b"\x05", reply, None)

        def reset(self):
            pass

        close = reset

    c = RemoteCalculator("LJ", broker="ipc:///nonexistent", check_broker=False)
    c._conn = Canned()
    return c


# Stages of a traced step: (from point, to point, what). Points 1-4 are the broker's, 11-14 the
# worker's Go side, 31-35 its Python helper (internal/trace, pyhost/aserpc_pyhost.py); 21 and 22
# are this client's send and reply, 20 its next send.
STAGES = [
    (21, 1, "client -> broker (client zmq send, 2 I/O threads, broker wakes)"),
    (1, 2, "broker: route to an idle worker"),
    (2, 11, "broker -> worker (zmq send, 2 I/O threads, worker's poll)"),
    (11, 31, "worker: decode, cgo call into Python"),
    (31, 32, "helper: buffers -> ase.Atoms"),
    (32, 33, "helper: check_state"),
    (33, 34, "the calculator's calculate()"),
    (34, 35, "helper: results -> arrays"),
    (35, 13, "helper -> Go: JSON meta, result copy"),
    (13, 14, "worker: encode the response"),
    (14, 3, "worker -> broker (zmq send, 2 I/O threads, broker wakes)"),
    (3, 4, "broker: route the reply"),
    (4, 22, "broker -> client (zmq send, 2 I/O threads, client wakes, recv, parse)"),
    (22, 20, "client between requests: MD, ASE bookkeeping, encode/decode"),
]


# The same for a session's step on the direct path: the client and the worker, no broker,
# a plain unix socket between them (worker/unixdirect.go), both ends busy-polling.
SESSION_STAGES = [
    (21, 11, "client -> worker (unix socket write; the worker's spin reads it)"),
    *STAGES[3:9],
    (14, 22, "worker -> client (unix socket write; the client's spin reads it, parse)"),
    (22, 20, "client between requests: MD, ASE bookkeeping, encode/decode"),
]


def traced(steps, session=False):
    """Median time of each stage of a remote MD step, from one traced broker + worker (a
    session's step on the direct path with ``session``)."""
    d = tempfile.mkdtemp(prefix="aserpc-trace-")
    prefix = os.path.join(d, "t")
    b = procs.Broker()
    os.environ["ASERPC_TRACE"] = prefix
    try:
        b.start(timeout=10, extra=["--log-level", "INFO"])
        b.worker("LJ", heartbeat=1.0, extra=["--log-level", "INFO"])
    except BaseException:
        b.close()
        raise
    finally:
        del os.environ["ASERPC_TRACE"]
    ev = {21: [], 22: []}
    try:
        c = RemoteCalculator("LJ", broker=b.frontend, session=session)

        def timing(exchange):
            def timed(*args):
                ev[21].append(time.monotonic_ns())
                m = exchange(*args)
                ev[22].append(time.monotonic_ns())
                return m
            return timed

        c._conn.exchange = timing(c._conn.exchange)
        if session:
            from aserpc import _transport

            direct = {k: k.exchange for k in (_transport.Direct, _transport.UnixDirect)}
            for k, f in direct.items():
                k.exchange = timing(f)
        try:
            per_step(c, steps)
            if session and not c.direct_round_trips:
                raise RuntimeError("the session never went direct")
        finally:
            if session:
                for k, f in direct.items():
                    k.exchange = f
            c.close()
    finally:
        b.close()  # SIGTERM: the processes write their last marks
    for f in glob.glob(prefix + ".*"):
        with open(f) as fh:
            for line in fh:
                p, ns = line.split()
                ev.setdefault(int(p), []).append(int(ns))
    shutil.rmtree(d, ignore_errors=True)
    for v in ev.values():
        v.sort()
    ev[20] = ev[21][1:]
    stages = SESSION_STAGES if session else STAGES
    points = [21, 11, 31, 32, 33, 34, 35, 13, 14, 22] if session else [21, 1, 2, 11, 31, 32, 33, 34, 35, 13, 14, 3, 4, 22]
    rows = []
    for i, (a, z) in enumerate(zip(ev[21][:-1], ev[22])):
        if i < 20:
            continue  # warm-up
        row = {21: a, 22: z, 20: ev[20][i]}
        for p in points[1:-1]:  # the one mark of each point inside this exchange
            v = ev.get(p, [])
            j = bisect.bisect_left(v, a)
            if j < len(v) and v[j] <= z:
                row[p] = v[j]
        if len(row) == len(points) + 1:
            rows.append(row)
    return {(a, z): statistics.median((r[z] - r[a]) / 1e3 for r in rows) for a, z, _ in stages}, len(rows)


def response_sizes(frontend):
    """Bytes of one LJ response, all_results vs asked only: H2O, and 10k atoms (periodic,
    energy+forces+stress asked, as a RemoteCalculator asks; LJ also holds free_energy,
    per-atom energies and stresses)."""
    from aserpc._transport import Connection, Waiter
    from aserpc.constants import REQUEST

    rng = np.random.default_rng(0)
    big_pos = rng.random((10_000, 3)) * 60.0  # dilute: a quick calculation
    cases = {"H2O (energy, forces)": (np.array([8, 1, 1], dtype=np.int32), water().positions, np.zeros((3, 3)),
                                      np.zeros(3, bool), ["energy", "forces"]),
             "10k atoms (energy, forces, stress)": (np.full(10_000, 18, dtype=np.int32), big_pos,
                                                    np.eye(3) * 60.0, np.ones(3, bool), ["energy", "forces", "stress"])}
    conn = Connection(frontend)
    out = {}
    try:
        for what, (z, pos, cell, pbc, props) in cases.items():
            payloads = [protocol.encode_request(z, pos, cell, pbc, props, typed_results=True,
                                                extra={"all_results": True} if a else None) for a in (True, False)]
            conn.exchange(REQUEST, [b"LJ", payloads[0]], Waiter(120.0))  # computes once
            n, times = [0, 0], [[], []]
            # The worker's calculator holds the results: this is the transfer's cost. The two
            # kinds alternate, and the median counts.
            for _ in range(200 if len(z) < 100 else 20):
                for i, payload in enumerate(payloads):
                    t0 = time.perf_counter()
                    m = conn.exchange(REQUEST, [b"LJ", payload], Waiter(120.0))
                    times[i].append(time.perf_counter() - t0)
                    n[i] = len(m.payload)
            out[what] = (n, [statistics.median(x) for x in times])
    finally:
        conn.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--compare-bin", metavar="PATH",
                    help="a second aserpc binary (e.g. a developer build on the system's libzmq) whose broker "
                         "and worker run the same MD step in the same alternating rounds")
    args = ap.parse_args()
    steps, rounds = args.steps, args.rounds
    e, f = lj_results()

    quiet = ["--log-level", "INFO"]  # what users run: the tests' DEBUG logs every request
    started: list = []
    try:
        bi = procs.Broker()
        started.append(bi)
        bi.start(timeout=10, extra=quiet)
        bi.worker("LJ", heartbeat=1.0, extra=quiet)
        bt = procs.Broker(directory=tempfile.mkdtemp(prefix="aserpc-bench-"))
        bt.frontend, bt.backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        started.append(bt)
        bt.start(timeout=10, extra=quiet)
        bt.worker("LJ", heartbeat=1.0, extra=quiet)
        bare = {kind: BareTwoHop(kind == "tcp") for kind in ("ipc", "tcp")}
        started += bare.values()
        compare = {}
        if args.compare_bin:
            ci = procs.Broker(binary=os.path.abspath(args.compare_bin))
            started.append(ci)
            ci.start(timeout=10, extra=quiet)
            ci.worker("LJ", heartbeat=1.0, extra=quiet)
            ct = procs.Broker(directory=tempfile.mkdtemp(prefix="aserpc-bench-"), binary=os.path.abspath(args.compare_bin))
            ct.frontend, ct.backend = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            started.append(ct)
            ct.start(timeout=10, extra=quiet)
            ct.worker("LJ", heartbeat=1.0, extra=quiet)
            compare = {"ipc": ci.frontend, "tcp": ct.frontend}

        variants = [
            ("in-process LennardJones", LennardJones),
            ("RemoteCalculator, broker ipc", lambda: RemoteCalculator("LJ", broker=bi.frontend)),
            ("RemoteCalculator, ipc, session (direct)", lambda: RemoteCalculator("LJ", broker=bi.frontend, session=True)),
            ("session, client not spinning", lambda: RemoteCalculator("LJ", broker=bi.frontend, session=True,
                                                                       spin_us=0)),
            ("RemoteCalculator, broker tcp", lambda: RemoteCalculator("LJ", broker=bt.frontend)),
            ("RemoteCalculator, tcp, session (direct)", lambda: RemoteCalculator("LJ", broker=bt.frontend, session=True)),
            ("SocketIOCalculator, unix socket", lambda: socketio(True)),
            ("zero-cost calculator", lambda: Free(e, f)),
            ("zero-cost + bare two-hop, ipc", lambda: bare["ipc"].calculator(e, f)),
            ("zero-cost + bare two-hop, tcp", lambda: bare["tcp"].calculator(e, f)),
            ("our client, canned reply", lambda: canned(e, f)),
        ]
        variants.append(("RemoteCalculator, ipc, asked results only",  # as before issue 25
                         lambda: RemoteCalculator("LJ", broker=bi.frontend, all_results=False)))
        for kind, front in compare.items():
            variants.append((f"compare binary, broker {kind}", lambda front=front: RemoteCalculator("LJ", broker=front)))
        # Rounds alternate between the variants, so a noisy moment hits one round of each
        # rather than every round of one; the best round of each counts.
        times: dict = {name: [] for name, _ in variants}
        for _ in range(rounds):
            for name, make in variants:
                calc = make()
                try:
                    times[name].append(per_step(calc, steps))
                finally:
                    close = getattr(calc, "close", None)
                    if close:
                        close()
        t = {name: min(v) for name, v in times.items()}
        tight = {kind: b.tight(steps, rounds) for kind, b in bare.items()}
        sizes = response_sizes(bi.frontend)
    finally:
        for x in started:
            x.close()
    tcp_steps = max(20, steps // 50)  # ~130 ms a step: fewer steps, one round
    sio_tcp = best(lambda: socketio(False), tcp_steps, 1)

    local, free = t["in-process LennardJones"], t["zero-cost calculator"]
    print(f"H2O VelocityVerlet step with LennardJones, best of {rounds} alternating rounds x {steps} steps")
    print(f"{'variant':44s} {'per step':>12s} {'overhead':>12s}")
    for name in ("in-process LennardJones", "RemoteCalculator, broker ipc", "RemoteCalculator, broker tcp",
                 "SocketIOCalculator, unix socket"):
        print(f"{name:44s} {t[name] * 1e6:10.1f}us {(t[name] - local) * 1e6:10.1f}us")
    print(f"{f'SocketIOCalculator, tcp ({tcp_steps} steps)':44s} {sio_tcp * 1e6:10.1f}us {(sio_tcp - local) * 1e6:10.1f}us")
    print()
    print("bare two-hop zmq round trip (pyzmq REQ -> zmq_proxy -> pyzmq REP echo, same size as our request):")
    for kind in ("ipc", "tcp"):
        in_md = t[f"zero-cost + bare two-hop, {kind}"] - free
        ours = t[f"RemoteCalculator, broker {kind}"] - local
        print(f"  {kind}: {tight[kind] * 1e6:.1f}us in a tight loop, {in_md * 1e6:.1f}us inside an MD step; "
              f"RemoteCalculator's overhead is {ours / tight[kind]:.2f}x / {ours / in_md:.2f}x that (target <= 2x)")
    print(f"MD step with a zero-cost calculator: {free * 1e6:.1f}us (so LennardJones itself costs "
          f"{(local - free) * 1e6:.1f}us)")
    print(f"our client's own share (encode, decode, ASE bookkeeping; canned reply): "
          f"{(t['our client, canned reply'] - free) * 1e6:.1f}us; the rest of the overhead is zmq, the broker "
          f"and the worker")
    sess = t["RemoteCalculator, ipc, session (direct)"] - local
    in_md = t["zero-cost + bare two-hop, ipc"] - free
    sio = t["SocketIOCalculator, unix socket"] - local
    plain = t["RemoteCalculator, broker ipc"] - local
    print(f"session (the worker answers the client directly, ipc): overhead {sess * 1e6:.1f}us = "
          f"{sess / in_md:.2f}x the bare two-hop inside an MD step (target <= 1.0x), "
          f"{sess / sio:.2f}x SocketIOCalculator's over a unix socket (target <= 0.33x), "
          f"{sess / plain:.2f}x RemoteCalculator's through the broker")
    # The same ratios round by round (each round runs every variant once, minutes apart at most),
    # which a machine whose speed drifts between minutes disturbs less than the best rounds.
    def paired(a, base, b, bbase):
        r = sorted((times[a][i] - times[base][i]) / (times[b][i] - times[bbase][i]) for i in range(rounds))
        return f"{statistics.median(r):.2f}x (quartiles {r[rounds // 4]:.2f}-{r[(3 * rounds) // 4]:.2f})"
    S, L = "RemoteCalculator, ipc, session (direct)", "in-process LennardJones"
    print(f"  round by round, median: {paired(S, L, 'zero-cost + bare two-hop, ipc', 'zero-cost calculator')} the "
          f"bare two-hop, {paired(S, L, 'SocketIOCalculator, unix socket', L)} SocketIOCalculator's")
    stcp = t["RemoteCalculator, tcp, session (direct)"] - local
    print(f"  with a tcp broker (this host's client takes the worker's unix socket): overhead {stcp * 1e6:.1f}us = "
          f"{stcp / (t['zero-cost + bare two-hop, tcp'] - free):.2f}x the bare two-hop on tcp")
    nospin = t["session, client not spinning"] - local
    print(f"  without the client's spin (spin_us=0): overhead {nospin * 1e6:.1f}us = {nospin / in_md:.2f}x the bare "
          f"two-hop; round by round {paired('session, client not spinning', L, 'zero-cost + bare two-hop, ipc', 'zero-cost calculator')}")
    print()
    print("every result of the calculation (free_energy, energies, ...) vs only those asked, same rounds:")
    every, asked = t["RemoteCalculator, broker ipc"] - local, t["RemoteCalculator, ipc, asked results only"] - local
    print(f"  H2O MD step overhead: {every * 1e6:.1f}us vs {asked * 1e6:.1f}us: {every / asked:.2f}x")
    for what, ((n_every, n_asked), (t_every, t_asked)) in sizes.items():
        print(f"  {what} response: {n_every} vs {n_asked} bytes ({n_every / n_asked:.2f}x); round trip of "
              f"cached results (median) {t_every * 1e6:.0f}us vs {t_asked * 1e6:.0f}us")
    if compare:
        print()
        print(f"this binary ({procs.aserpc_bin()}) vs --compare-bin ({args.compare_bin}), same rounds:")
        for kind in compare:
            ours, theirs = t[f"RemoteCalculator, broker {kind}"] - local, t[f"compare binary, broker {kind}"] - local
            print(f"  {kind}: overhead {ours * 1e6:.1f}us vs {theirs * 1e6:.1f}us: {ours / theirs:.2f}x")
    for session in (False, True):
        stages, n = traced(steps, session)
        print()
        what = "a session's step on the direct path" if session else "a remote step"
        print(f"where {what} goes (ipc, median of {n} traced steps; ASERPC_TRACE):")
        for a, z, what in (SESSION_STAGES if session else STAGES):
            print(f"  {stages[(a, z)]:8.1f}us  {what}")
        print(f"  {sum(stages.values()):8.1f}us  sum of the medians (LennardJones in-process: {(local - free) * 1e6:.1f}us,"
              f" a zero-cost MD step: {free * 1e6:.1f}us)")


if __name__ == "__main__":
    main()
