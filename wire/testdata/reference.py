"""Run aserpc 0.1.3's own protocol code for the Go wire tests.

Run with an interpreter that has ``aserpc==0.1.3`` installed (the Go tests
build that venv themselves). Subcommands, all writing JSON to stdout:

generate
    The golden vectors the reference can express, made by its
    ``pack_request`` / ``pack_response``: a list of
    ``{name, kind, description, hex, decoded}`` (see vectors.md).
check
    Reads ``[{name, kind, hex, n_atoms}]`` on stdin and runs the reference's
    ``unpack_request`` / ``unpack_response`` on each, answering
    ``[{name, ok, decoded}]`` or ``[{name, ok: false, error_type, error}]``.
encode
    Reads a list of Python literals on stdin and answers the hex of
    ``msgspec.msgpack.encode`` of each.
error
    Reads a list of messages on stdin and answers the hex of
    ``pack_response(error=msg)`` for each.
"""

import json
import sys

import msgspec
import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

from aserpc.protocol import pack_request, pack_response, unpack_request, unpack_response


def atoms_json(atoms: Atoms, properties: list[str]) -> dict:
    return {
        "version": 1,
        "n_atoms": len(atoms),
        "numbers": [int(z) for z in atoms.numbers],
        "positions": np.asarray(atoms.positions, dtype=np.float64).tolist(),
        "cell": np.asarray(atoms.cell, dtype=np.float64).tolist(),
        "pbc": [bool(p) for p in atoms.pbc],
        "properties": list(properties),
    }


def value_json(value):
    """A result value as the vectors describe it: bins as {"f8": [...]}."""
    if isinstance(value, np.ndarray):
        return {"f8": value.astype(np.float64).ravel().tolist()}
    if isinstance(value, bytes):
        return {"f8": np.frombuffer(value, dtype=np.float64).tolist()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def request_vectors():
    h = Atoms("H", positions=[[0.0, 0.0, 0.0]])
    water = molecule("H2O")
    cu = bulk("Cu", cubic=True)
    cu222 = bulk("Cu").repeat((2, 2, 2))
    mixed = molecule("H2O")
    mixed.cell = [[6.0, 0.0, 0.0], [0.5, 7.0, 0.0], [0.25, 0.75, 8.0]]
    mixed.pbc = [True, False, True]
    return [
        ("request_h_atom", "one H atom at the origin, no cell, no pbc, [energy] (the spec's 121-byte example)", h, ["energy"]),
        ("request_h_atom_no_properties", "one H atom, empty property list", h, []),
        ("request_water", 'ase.build.molecule("H2O"), [energy, forces]', water, ["energy", "forces"]),
        ("request_cu_cubic", 'ase.build.bulk("Cu", cubic=True): 4 atoms, pbc, [energy, forces, stress]', cu, ["energy", "forces", "stress"]),
        ("request_cu_2x2x2", 'ase.build.bulk("Cu").repeat((2, 2, 2)): 8 atoms, non-orthogonal cell, pbc', cu222, ["energy", "forces", "stress"]),
        ("request_water_mixed_pbc", "water in a triclinic cell with pbc [True, False, True]", mixed, ["energy"]),
    ]


def response_vectors():
    forces = (np.arange(12, dtype=np.float64).reshape(4, 3) - 5.5) * 0.125
    stress = np.array([0.01, 0.02, 0.03, -0.004, 0.005, -0.006])
    energies = np.array([-3.5, -3.25, -3.75, -3.0])
    # Dict keys in sorted order: the Go encoder sorts map keys.
    return [
        ("response_energy", "success, {energy: float}", {"energy": -14.25}),
        ("response_energy_forces_stress", "success for 4 atoms: energy float, forces (4,3) and stress (6,) as float64 bins",
         {"energy": np.float64(-14.5), "forces": forces, "stress": stress}),
        ("response_all_properties", "success with per-atom energies, an int32 array (sent as float64), a numpy int and float scalar, a str and None",
         {"charges": np.array([1, -1, 0, 2], dtype=np.int32), "energies": energies, "energy": -13.5, "free_energy": np.float32(-13.75),
          "label": "emt", "magmom": None, "nsteps": np.int64(300)}),
    ]


def error_vectors():
    return [
        ("response_error", 'error response for "No EMT-potential for U"', "No EMT-potential for U"),
        ("response_error_empty", "error response with an empty message", ""),
        ("response_error_no_workers", "broker error with a message longer than 31 bytes (str8)", "No workers available for calculator 'mace-mp-0-medium'"),
    ]


def generate():
    out = []
    for name, desc, atoms, props in request_vectors():
        out.append({"name": name, "kind": "request", "description": desc,
                    "hex": pack_request(atoms, props).hex(), "decoded": atoms_json(atoms, props)})
    for name, desc, results in response_vectors():
        decoded = {"version": 1, "success": True, "results": {k: value_json(v) for k, v in results.items()}, "error": None}
        out.append({"name": name, "kind": "response", "description": desc,
                    "hex": pack_response(results).hex(), "decoded": decoded})
    for name, desc, msg in error_vectors():
        decoded = {"version": 1, "success": False, "results": {}, "error": msg}
        out.append({"name": name, "kind": "response", "description": desc,
                    "hex": pack_response(error=msg).hex(), "decoded": decoded})
    return out


def check(items):
    out = []
    for it in items:
        data = bytes.fromhex(it["hex"])
        try:
            if it["kind"] == "request":
                atoms, props = unpack_request(data)
                decoded = atoms_json(atoms, props)
            else:
                results = unpack_response(data, it.get("n_atoms"))
                decoded = {k: value_json(v) for k, v in results.items()}
                decoded["__shapes__"] = {k: list(v.shape) for k, v in results.items() if isinstance(v, np.ndarray)}
            out.append({"name": it["name"], "ok": True, "decoded": decoded})
        except Exception as e:  # the Go test compares type and message
            out.append({"name": it["name"], "ok": False, "error_type": type(e).__name__, "error": str(e)})
    return out


def main():
    cmd = sys.argv[1]
    if cmd == "generate":
        res = generate()
    elif cmd == "check":
        res = check(json.load(sys.stdin))
    elif cmd == "encode":
        res = [msgspec.msgpack.encode(eval(lit)).hex() for lit in json.load(sys.stdin)]
    elif cmd == "error":
        res = [pack_response(error=m).hex() for m in json.load(sys.stdin)]
    else:
        sys.exit(f"unknown command {cmd!r}")
    json.dump({"msgspec": msgspec.__version__, "result": res}, sys.stdout)


if __name__ == "__main__":
    main()
