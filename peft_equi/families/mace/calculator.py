"""An ASE calculator for MACE models with adapters (merged or not), via MACE's own calculator."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_equi.energy_correction import EnergyShift
from peft_equi.utils.copying import deepcopy_module


def mace_calculator(model: nn.Module, device: str = "cpu", energy_shift: EnergyShift | None = None, **kwargs: Any):
    """``mace.calculators.MACECalculator`` for ``model`` (a ``PeftModel`` or a plain MACE model).

    MACE's calculator freezes and may recast the model it is given, so it gets a copy: the
    model you are training is left alone.  ``default_dtype`` defaults to the model's dtype.
    ``energy_shift``: a run's per-element energy correction (its directory, its
    ``energy_correction.json`` or ``{element: eV}``), folded into the copy's atomic energies, so
    that the calculator gives the fine-tuned absolute energies.
    """
    from mace.calculators import MACECalculator

    from peft_equi.families.mace.potential import MacePotential

    dtype = next(model.parameters()).dtype
    kwargs.setdefault("default_dtype", "float64" if dtype == torch.float64 else "float32")
    copied = deepcopy_module(model)
    MacePotential(copied, "calculator").fold_energy_shift(copied, energy_shift)
    return MACECalculator(models=copied, device=device, **kwargs)
