"""Computing several structures in one model call: the worker's batch path.

A calculator batches when it offers ``calculate_batch(atoms_list, properties) -> list`` (one
results dict per structure, with the keys and shapes ``calculate`` gives; an item may be an
exception instance, which fails that structure only) and, optionally, ``batch_key(atoms)``:
structures whose keys differ never share a call (a model's task, charge or spin). A
calculator without them gets them from an adapter: one its entry point names
(``"batch": "module:callable"``, called with the calculator) or one of the built-in adapters
below (CHGNet, MACE), chosen by the calculator's class. Without any, structures are computed
one by one with ``calculate``, as always.

Batching never fails a structure that would have succeeded alone: an out-of-memory error
splits the batch in halves and retries them (and reports the atoms that fitted, so that the
worker lowers its budget); any other error of a batch call retries its structures one by
one, so that one bad structure fails only its own request.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import aserpc_compute as _compute

__all__ = ["batch_path", "compute_batch", "is_oom", "ADAPTERS"]


# --------------------------------------------------------------------------- adapters


class _CHGNet:
    """CHGNet (``chgnet.model.dynamics.CHGNetCalculator``): ``model.predict_structure`` on the
    list of structures (one forward pass), each prediction converted as
    ``CHGNetCalculator.calculate`` converts its own (energy per atom × atoms for an intensive
    model, stress × ``stress_weight``, crystal features, site energies when asked)."""

    def __init__(self, calc: Any) -> None:
        self.calc = calc

    def calculate_batch(self, atoms_list: Sequence[Any], properties: Sequence[str]) -> List[Dict[str, Any]]:
        from pymatgen.io.ase import AseAtomsAdaptor

        calc = self.calc
        structures = [AseAtomsAdaptor.get_structure(a) for a in atoms_list]
        site = bool(getattr(calc, "return_site_energies", False))
        preds = calc.model.predict_structure(structures, task="efsm", return_crystal_feas=True,
                                             return_site_energies=site, batch_size=len(structures))
        if isinstance(preds, dict):
            preds = [preds]
        out = []
        for s, p in zip(structures, preds):
            factor = len(s) if calc.model.is_intensive else 1
            r: Dict[str, Any] = {}
            for key, (name, f) in (("e", ("energy", factor)), ("f", ("forces", 1)), ("m", ("magmoms", 1)),
                                   ("s", ("stress", calc.stress_weight))):
                if key in p:
                    r[name] = p[key] * f
            r["free_energy"] = r["energy"]
            r["crystal_fea"] = p["crystal_fea"]
            if site:
                r["energies"] = p["site_energies"]
            out.append(r)
        return out


class _MACE:
    """MACE (``mace.calculators.MACECalculator``, one plain MACE model, not compiled): each
    structure becomes an ``AtomicData`` as ``MACECalculator`` makes it, ``torch_geometric``
    batches them, one forward pass, and each graph's outputs are sliced out and converted as
    ``MACECalculator.calculate`` converts its own."""

    def __init__(self, calc: Any) -> None:
        why = None
        if len(getattr(calc, "models", ())) != 1:
            why = "a committee of models"
        elif getattr(calc, "use_compile", False):
            why = "a compiled model (padded graphs)"
        elif getattr(calc, "compute_atomic_stresses", False):
            why = "atomic stresses"
        elif getattr(calc, "model_type", "MACE") != "MACE":
            why = f"model type {calc.model_type}"
        if why:
            raise TypeError(f"the MACE batch adapter serves one plain MACE model, not {why}")
        self.calc = calc

    def calculate_batch(self, atoms_list: Sequence[Any], properties: Sequence[str]) -> List[Dict[str, Any]]:
        import torch
        from ase.stress import full_3x3_to_voigt_6_stress
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        calc = self.calc
        calc.arrays_keys.update({calc.charges_key: "charges"})
        keyspec = mace_data.KeySpecification(info_keys=calc.info_keys, arrays_keys=calc.arrays_keys)
        graphs = []
        with torch_tools.default_dtype(calc.default_dtype):
            for a in atoms_list:
                config = mace_data.config_from_atoms(a, key_specification=keyspec, head_name=calc.head)
                graphs.append(mace_data.AtomicData.from_config(config, z_table=calc.z_table, cutoff=calc.r_max,
                                                               heads=calc.available_heads))
        batch = torch_geometric.Batch.from_data_list(graphs).to(calc.device)
        model = calc.models[0]
        dtype = next(model.parameters()).dtype
        for key in batch.keys:
            v = batch[key]
            if torch.is_tensor(v) and torch.is_floating_point(v):
                batch[key] = v.to(dtype=dtype)
        d = batch.to_dict()
        out = model(d, compute_stress=True, training=False, compute_edge_forces=False,
                    compute_atomic_stresses=False)
        eu, lu = calc.energy_units_to_eV, calc.length_units_to_A
        ptr = [int(x) for x in d["ptr"].cpu()]
        energy = out["energy"].detach().cpu()
        forces = out["forces"].detach().cpu().numpy()
        stress = out.get("stress")
        stress = stress.detach().cpu().numpy() if stress is not None else None
        node_energy = out.get("node_energy")
        node_e0 = None
        if node_energy is not None:
            node_energy = node_energy.detach().cpu().numpy()
            heads = batch["head"][batch["batch"]]
            node_e0 = model.atomic_energies_fn(batch["node_attrs"])[
                torch.arange(heads.shape[0]), heads].detach().cpu().numpy()
        res = []
        for i in range(len(atoms_list)):
            lo, hi = ptr[i], ptr[i + 1]
            r: Dict[str, Any] = {"energy": energy[i].item() * eu}
            if node_energy is not None:
                r["node_energy"] = node_energy[lo:hi] * eu
            r["forces"] = forces[lo:hi] * (eu / lu)
            if stress is not None:
                r["stress"] = full_3x3_to_voigt_6_stress(stress[i] * (eu / lu ** 3))
            r["free_energy"] = r["energy"]
            if node_energy is not None:
                r["energies"] = r["node_energy"].copy()
                r["node_energy"] = r["node_energy"] - node_e0[lo:hi]
            res.append(r)
        return res


#: Built-in adapters by the calculator's class, "module.QualName".
ADAPTERS: Dict[str, Callable[[Any], Any]] = {
    "chgnet.model.dynamics.CHGNetCalculator": _CHGNet,
    "mace.calculators.mace.MACECalculator": _MACE,
}


def batch_path(calc: Any, adapter: Any = None) -> Optional[Tuple[Callable, Optional[Callable], str]]:
    """``(calculate_batch, batch_key or None, where)`` for calc, or None (one by one).

    ``adapter`` is what its entry point named (a callable taking the calculator)."""
    fn = getattr(calc, "calculate_batch", None)
    if callable(fn):
        key = getattr(calc, "batch_key", None)
        return fn, key if callable(key) else None, "the calculator's calculate_batch"
    if adapter is None:
        t = type(calc)
        for klass in t.__mro__:
            adapter = ADAPTERS.get(f"{klass.__module__}.{klass.__qualname__}")
            if adapter is not None:
                break
    if adapter is None:
        return None
    a = adapter(calc)
    key = getattr(a, "batch_key", None)
    return a.calculate_batch, key if callable(key) else None, f"adapter {getattr(adapter, '__qualname__', adapter)}"


# --------------------------------------------------------------------------- computing


def is_oom(e: BaseException) -> bool:
    """Whether e is a (CUDA or other accelerator) out-of-memory error, as torch raises it."""
    if type(e).__name__ in ("OutOfMemoryError", "MemoryError"):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def _free_accelerator() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


class _Stats:
    def __init__(self) -> None:
        self.groups: List[List[int]] = []  # [structures, atoms] per model call that succeeded
        self.splits = 0
        self.oom_atoms = 0  # the smallest batch (in atoms) that ran out of memory
        self.ok_after_oom = 0  # the largest batch (in atoms) that fitted after one did not


def _call(fn: Callable, atoms_list: List[Any], props: List[str], st: _Stats) -> List[Any]:
    """fn on atoms_list, one result (dict or exception) per structure, never raising: an
    out-of-memory error splits the batch, any other error retries the structures one by one."""
    n_atoms = sum(len(a) for a in atoms_list)
    err: Optional[BaseException] = None
    try:
        out = fn(atoms_list, props)
        if not isinstance(out, (list, tuple)) or len(out) != len(atoms_list):
            raise TypeError(f"calculate_batch returned {type(out).__name__} of "
                            f"{len(out) if hasattr(out, '__len__') else '?'} items for {len(atoms_list)} structures")
        st.groups.append([len(atoms_list), n_atoms])
        if st.oom_atoms:
            st.ok_after_oom = max(st.ok_after_oom, n_atoms)
        return list(out)
    except Exception as e:  # (SystemExit and KeyboardInterrupt go through)
        err = e
    oom = is_oom(err)
    if len(atoms_list) == 1:
        return [err]
    if oom:
        # Outside the except block: the failed call's tensors are freed with its frames.
        err = None
        _free_accelerator()
        st.splits += 1
        st.oom_atoms = n_atoms if not st.oom_atoms else min(st.oom_atoms, n_atoms)
        half = len(atoms_list) // 2
        return _call(fn, atoms_list[:half], props, st) + _call(fn, atoms_list[half:], props, st)
    return [r for a in atoms_list for r in _call(fn, [a], props, st)]


def compute_batch(calc: Any, path: Optional[Tuple[Callable, Optional[Callable], str]],
                  items: Sequence[Tuple[Any, Optional[Sequence[str]]]]) -> Tuple[List[Any], Dict[str, Any]]:
    """Compute ``items`` (atoms, properties or None for the default) on calc.

    Returns one entry per item, ``(results, held)`` — the asked properties in order and the
    structure's whole results dict — or an exception, and figures for the worker:
    ``{"groups": [[structures, atoms], ...], "splits", "oom_atoms", "ok_after_oom"}``.
    """
    st = _Stats()
    if path is None:
        out: List[Any] = []
        for atoms, props in items:
            try:
                res = _compute.compute(calc, atoms, props)
                held = getattr(calc, "results", None)
                # (a copy: the next structure's calculation may update the dict in place)
                out.append((res, dict(held) if isinstance(held, dict) else None))
            except Exception as e:
                out.append(e)
            st.groups.append([1, len(atoms)])
        return out, vars(st)
    fn, key, _where = path
    groups: Dict[Any, List[int]] = {}
    out = [None] * len(items)
    for i, (atoms, _props) in enumerate(items):
        try:
            k = key(atoms) if key is not None else None
            hash(k)
        except Exception as e:
            out[i] = e
            continue
        groups.setdefault(k, []).append(i)
    for idx in groups.values():
        asked = []
        for i in idx:
            atoms, props = items[i]
            for p in props if props is not None else _compute.default_properties(calc, atoms):
                if p not in asked:
                    asked.append(p)
        results = _call(fn, [items[i][0] for i in idx], asked, st)
        for i, r in zip(idx, results):
            if isinstance(r, BaseException):
                out[i] = r
                continue
            atoms, props = items[i]
            try:
                out[i] = (_pick(calc, atoms, props, r), r)
            except Exception as e:
                out[i] = e
    return out, vars(st)


def _pick(calc: Any, atoms: Any, props: Optional[Sequence[str]], r: Any) -> Dict[str, Any]:
    """The asked properties from one structure's results, as ``compute`` gives them."""
    if not isinstance(r, dict):
        raise TypeError(f"calculate_batch gave a {type(r).__name__} for a structure, not a dict")
    if props is None:
        props = _compute.default_properties(calc, atoms)
    out: Dict[str, Any] = {}
    for p in props:
        if p not in r:
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError(f"{p} not present in this calculation")
        v = r[p]
        if p == "stress" and getattr(v, "shape", None) == (3, 3):
            from ase.stress import full_3x3_to_voigt_6_stress

            v = full_3x3_to_voigt_6_stress(v)
        out[p] = v
    return out


