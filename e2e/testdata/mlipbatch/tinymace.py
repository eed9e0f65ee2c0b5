"""A small MACE model with random weights (seeded), built in the test: mace-torch's own
``MACECalculator`` serving it, so the batch path runs real MACE code without downloading a
foundation model. float64, so batched and single results agree to rounding."""

import numpy as np


def calculator(seed=0, dtype="float64", device="cpu"):
    import torch
    from mace import modules  # (first: it lets e3nn 0.4.4 load its constants under torch >= 2.6)
    from mace.calculators import MACECalculator
    from e3nn import o3

    torch.manual_seed(seed)
    torch.set_default_dtype(getattr(torch, dtype))
    z = [1, 6, 7, 8, 13, 14, 26, 29]
    model = modules.MACE(
        r_max=4.5, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(z), hidden_irreps=o3.Irreps("16x0e + 16x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.linspace(-3.0, -1.0, len(z)),
        avg_num_neighbors=8.0, atomic_numbers=z, correlation=3, gate=torch.nn.functional.silu)
    model = model.to(device)
    return MACECalculator(models=model, device=device, default_dtype=dtype)
