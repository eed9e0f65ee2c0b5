"""The golden vectors of wire/testdata: our encoder writes them byte for byte, our decoder reads them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from aserpc import protocol
from aserpc.errors import ProtocolError, RemoteError

TESTDATA = os.path.join(os.path.dirname(__file__), "..", "..", "wire", "testdata")


def _vectors():
    with open(os.path.join(TESTDATA, "vectors.json")) as f:
        return json.load(f)


VECTORS = _vectors()


def _payload(v):
    with open(os.path.join(TESTDATA, v["file"]), "rb") as f:
        return f.read()


def _arrays(d):
    return {k: protocol.encode_array(np.asarray(a["values"], dtype=a["dtype"]).reshape(a["shape"]))
            for k, a in d.items()}


@pytest.mark.parametrize("v", [v for v in VECTORS if v["kind"] == "request"], ids=lambda v: v["name"])
def test_request_encodes_byte_for_byte(v):
    d = v["decoded"]
    got = protocol.encode_request(
        d["numbers"], d["positions"], d["cell"], d["pbc"], d["properties"],
        info=d.get("info"), arrays=_arrays(d.get("arrays", {})), typed_results=d.get("typed_results", False))
    assert got == _payload(v)


@pytest.mark.parametrize("v", [v for v in VECTORS if v["kind"] == "request"], ids=lambda v: v["name"])
def test_request_decodes(v):
    d = v["decoded"]
    r = protocol.decode_request(_payload(v))
    assert r["version"] == d["version"]
    assert r["numbers"].tolist() == d["numbers"]
    assert len(r["numbers"]) == d["n_atoms"]
    np.testing.assert_array_equal(r["positions"], d["positions"])
    np.testing.assert_array_equal(r["cell"], d["cell"])
    assert r["pbc"].tolist() == d["pbc"]
    assert r["properties"] == d["properties"]
    assert r["info"] == d.get("info", {})
    assert r["typed_results"] == d.get("typed_results", False)
    for name, a in d.get("arrays", {}).items():
        got = r["arrays"][name]
        assert got.dtype.str == a["dtype"] and list(got.shape) == a["shape"]
        assert got.ravel().tolist() == a["values"]
    if "info" in d:  # ints stay ints
        for k, val in d["info"].items():
            assert type(r["info"][k]) is type(val)


@pytest.mark.parametrize("v", [v for v in VECTORS if v["kind"] == "response"], ids=lambda v: v["name"])
def test_response_decodes(v):
    d = v["decoded"]
    r = protocol.decode_response(_payload(v))
    assert r.success == d["success"]
    assert r.error == d["error"]
    assert r.error_type == d.get("error_type")
    assert r.traceback == d.get("traceback")
    typed = d.get("typed", {})
    assert set(r.results) == set(d["results"]) | set(typed)
    for name, want in d["results"].items():
        got = r.results[name]
        if name in typed:
            t = typed[name]
            assert got.dtype.str == t["dtype"] and list(got.shape) == t["shape"]
            assert got.ravel().tolist() == t["values"]
        elif isinstance(want, dict) and "f8" in want:
            assert got.dtype == np.float64 and got.tolist() == want["f8"]
        else:
            assert got == want and type(got) is type(want)
    if not d["success"]:
        with pytest.raises(RemoteError) as e:
            r.raise_for_error()
        assert str(e.value) == (d["error"] or "Unknown error")
        assert isinstance(e.value, RuntimeError)
        assert e.value.remote_type == d.get("error_type")


@pytest.mark.parametrize("v", [v for v in VECTORS if v["kind"] == "response" and v["producer"].startswith("aserpc 0.1.3")],
                         ids=lambda v: v["name"])
def test_reference_response_packs_byte_for_byte(v):
    d = v["decoded"]
    if not d["success"]:
        got = protocol.pack_response(error=d["error"])
    else:
        res = {k: (np.array(x["f8"]) if isinstance(x, dict) else x) for k, x in d["results"].items()}
        # the reference packs keys in the calculator's order; the vector's bytes tell which
        order = list(protocol.msgpack.unpackb(_payload(v), raw=False)[2])
        got = protocol.pack_response({k: res[k] for k in order})
    assert got == _payload(v)


def test_forces_reshaped_with_n_atoms():
    v = next(v for v in VECTORS if v["name"] == "response_energy_forces_stress")
    r = protocol.unpack_response(_payload(v), n_atoms=4)
    assert r["forces"].shape == (4, 3) and r["stress"].shape == (6,)
    r["forces"][0, 0] = 1.0  # writable


def test_version_mismatch_is_value_error():
    bad = protocol.msgpack.packb([2, True, {}, None])
    with pytest.raises(ValueError, match="Protocol version mismatch: got 2, expected 1"):
        protocol.decode_response(bad)
    with pytest.raises(ProtocolError):
        protocol.decode_response(b"\xc1")


def test_reference_api_roundtrip():
    from ase.build import bulk

    cu = bulk("Cu", cubic=True) * (2, 2, 2)
    atoms, props = protocol.unpack_request(protocol.pack_request(cu, ["energy", "stress"]))
    assert props == ["energy", "stress"]
    np.testing.assert_array_equal(atoms.positions, cu.positions)
    np.testing.assert_array_equal(atoms.cell.array, cu.cell.array)
    assert protocol.get_request_info(protocol.pack_request(cu, ["energy"])) == {
        "version": 1, "n_atoms": 32, "properties": ["energy"]}


def test_info_jsonable():
    info = {"charge": np.int64(1), "spin": 2, "flag": np.bool_(True), "v": np.arange(3), "x": 0.5}
    j = protocol.jsonable(info)
    assert j == {"charge": 1, "flag": True, "spin": 2, "v": [0, 1, 2], "x": 0.5}
    assert type(j["charge"]) is int and type(j["v"][0]) is int
    with pytest.raises(TypeError):
        protocol.jsonable({"calc": object()})
