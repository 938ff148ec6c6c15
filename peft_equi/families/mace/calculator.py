"""An ASE calculator for MACE models with adapters (merged or not), via MACE's own calculator."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def mace_calculator(model: nn.Module, device: str = "cpu", **kwargs: Any):
    """``mace.calculators.MACECalculator`` for ``model`` (a ``PeftModel`` or a plain MACE model).

    MACE's calculator freezes and may recast the model it is given, so it gets a copy: the
    model you are training is left alone.  ``default_dtype`` defaults to the model's dtype.
    """
    from mace.calculators import MACECalculator

    dtype = next(model.parameters()).dtype
    kwargs.setdefault("default_dtype", "float64" if dtype == torch.float64 else "float32")
    return MACECalculator(models=copy.deepcopy(model), device=device, **kwargs)
