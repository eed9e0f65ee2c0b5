#!/usr/bin/env python3
"""Compare builds of one benchmark program, run alternately in one session.

    python3 bench/compare_builds.py [--rounds 3] [--columns A,B] NAME=COMMAND NAME=COMMAND ...

Each COMMAND (a shell command, e.g. a benchmark binary built two ways) runs once per round, the
commands taking turns, so a noisy moment hurts one run of each rather than all runs of one. Every
line of their output that holds measurements ("label  123.4 µs  4567/s ...") is parsed; for each
label and column the best value over the rounds counts (least µs, most /s), and the table gives
each build's best and the ratio of the first build to each other (for µs, > 1 means the first is
slower; for /s, < 1 means it is slower).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

VALUE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s?(µs|/s)")


def parse(text: str) -> dict:
    rows = {}
    for line in text.splitlines():
        m = VALUE.search(line)
        if not m:
            continue
        label = line[: m.start()].strip()
        rows[label] = [(float(v), unit) for v, unit in VALUE.findall(line)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--columns", default="", help="names of the measurement columns, comma-separated")
    ap.add_argument("builds", nargs="+", metavar="NAME=COMMAND")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    if any(len(b) != 2 for b in builds) or len(builds) < 2:
        sys.exit("compare_builds: give two or more NAME=COMMAND")

    best: dict = {name: {} for name, _ in builds}
    for r in range(args.rounds):
        for name, cmd in builds:
            print(f"== round {r + 1}/{args.rounds}: {name}: {cmd}", flush=True)
            out = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            print(out.stdout, end="", flush=True)
            if out.returncode != 0:
                sys.exit(f"compare_builds: {name} failed ({out.returncode}):\n{out.stderr}")
            for label, values in parse(out.stdout).items():
                cur = best[name].setdefault(label, values)
                for i, (v, unit) in enumerate(values):
                    if i < len(cur) and (v < cur[i][0] if unit == "µs" else v > cur[i][0]):
                        cur[i] = (v, unit)

    columns = [c for c in args.columns.split(",") if c]
    first = builds[0][0]
    print(f"\nbest of {args.rounds} alternating rounds; ratio = {first} / other")
    width = max(len(label) for label in best[first]) + 2
    for label, values in best[first].items():
        for i, (v, unit) in enumerate(values):
            col = columns[i] if i < len(columns) else f"[{i + 1}]" if len(values) > 1 else ""
            cells = [f"{label:{width}s}{col:16s}", f"{first} {v:10.1f} {unit}"]
            for name, _ in builds[1:]:
                other = best[name].get(label)
                if other and i < len(other):
                    cells.append(f"{name} {other[i][0]:10.1f} {unit}  ratio {v / other[i][0]:.2f}")
            print("  ".join(cells))


if __name__ == "__main__":
    main()
