"""Small float64 NequIP-framework models for H, C, N, O (random weights; no downloads)."""

from __future__ import annotations

import torch

from peft_equi.families.nequip.potential import NequipPotential, preserved_global_state, set_nequip_global_state

TYPES = ["H", "C", "N", "O"]
#: per-type energy shifts of the models (eV)
SHIFTS = {"H": -10.7, "C": -48.8, "N": -70.9, "O": -102.5}
#: a small NequIPGNNModel (``small_nequip("nequip.model.NequIPGNNModel", **NEQUIP_OPTIONS)``)
NEQUIP_OPTIONS = dict(l_max=2, num_features=8, radial_mlp_depth=1, radial_mlp_width=8)


def small_nequip(builder: str, shifts: dict[str, float] | float = SHIFTS, **options) -> NequipPotential:
    """A float64 model of ``builder`` (e.g. ``nequip.model.NequIPGNNModel``) with per-type energy ``shifts``."""
    set_nequip_global_state()
    with preserved_global_state():
        torch.set_default_dtype(torch.float64)
        from hydra.utils import get_method

        model = get_method(builder)(
            seed=0,
            model_dtype="float64",
            type_names=TYPES,
            r_max=4.0,
            num_layers=2,
            avg_num_neighbors=5.0,
            per_type_energy_scales={t: 1.0 for t in TYPES},
            per_type_energy_shifts=shifts,
            **options,
        )
    return NequipPotential(model, builder.rpartition(".")[2])
