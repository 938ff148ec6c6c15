"""Reference MACE architectures with random weights (no weights can be downloaded here).

Public because users need them too: to count what a preset trains on the papers' model
(``benchmarks/param_counts.py``), to time adapters on it (``benchmarks/cost.py``), and to
try a config before the foundation model's file is at hand; the tests build their models
from them.

``mace_off23_medium`` is the architecture the MMEA and ELoRA papers fine-tune: hidden
``128x0e+128x1o``, 2 interactions (``RealAgnosticInteractionBlock`` then
``RealAgnosticResidualInteractionBlock``), max_ell 3, correlation 3, r_max 5, 8 Bessel
functions, polynomial cutoff 5, radial MLP [64, 64, 64], readout MLP ``16x0e``.
``small`` keeps max_ell and correlation at 2 so it builds in well under a second;
``small_nonlinear`` uses ``RealAgnosticResidualNonLinearInteractionBlock`` (radial MLP of
``nn.Linear`` layers, ``o3.Linear`` skip connection).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

HCO = (1, 6, 8)
MACE_OFF23_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)  # H, C, N, O, F, P, S, Cl, Br, I


def build_mace(
    size: str = "small",
    atomic_numbers: Sequence[int] = HCO,
    atomic_energies: Sequence[float] | None = None,
    seed: int = 0,
) -> torch.nn.Module:
    """A ``ScaleShiftMACE`` of the given ``size`` (``"small"`` or ``"mace_off23_medium"``) in the default dtype."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    if atomic_energies is None:
        atomic_energies = np.zeros(len(atomic_numbers))
    common = dict(
        r_max=5.0,
        num_bessel=8,
        num_polynomial_cutoff=5,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2,
        num_elements=len(atomic_numbers),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.asarray(atomic_energies, dtype=float),
        avg_num_neighbors=10.0,
        atomic_numbers=list(atomic_numbers),
        gate=torch.nn.functional.silu,
        use_reduced_cg=False,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    if size in ("small", "small_nonlinear"):
        sizes = dict(max_ell=2, correlation=2, hidden_irreps=o3.Irreps("16x0e+16x1o"), radial_MLP=[16, 16])
        if size == "small_nonlinear":  # interaction blocks with an nn.Linear radial MLP and o3.Linear skip
            block = modules.interaction_classes["RealAgnosticResidualNonLinearInteractionBlock"]
            sizes |= dict(interaction_cls=block, interaction_cls_first=block)
    elif size == "mace_off23_medium":
        sizes = dict(max_ell=3, correlation=3, hidden_irreps=o3.Irreps("128x0e+128x1o"), radial_MLP=[64, 64, 64])
    else:
        raise ValueError(f"unknown MACE size {size!r}; known: 'small', 'small_nonlinear', 'mace_off23_medium'")
    return modules.ScaleShiftMACE(**(common | sizes))
