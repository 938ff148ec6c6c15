"""A conventional adapter that ignores the irreps structure - it BREAKS equivariance.

``y <- y + (alpha/r) (x A) B`` with ``A (dim_in, r)``, ``B (r, dim_out)`` acting on the
flattened components of the first operand, mixing components of different ``l``.  This
is the ablation "a conventional adapter breaks equivariance"; ``equivariant = False``, so
attaching it warns.  ``B`` starts at zero, so the model is unchanged (and still equivariant)
until it is trained.
"""

from __future__ import annotations

import math

import torch

from peft_equi.adapters.conventional.config import ConventionalConfig
from peft_equi.adapters.lowrank import down_factor, scaling, up_factor
from peft_equi.core.adapter import Adapter
from peft_equi.core.registry import register_adapter
from peft_equi.core.spec import LayerSpec


@register_adapter
class ConventionalAdapter(Adapter):
    """A dense bottleneck over all components: breaks equivariance (ablations only; not mergeable)."""

    name = "conventional"
    config_class = ConventionalConfig
    equivariant = False

    def __init__(self, spec: LayerSpec, config: ConventionalConfig) -> None:
        super().__init__(spec, config)
        self.input_dependent = True
        dim_in = spec.irreps_in[0].dim
        self.scaling = scaling(config.rank, config.alpha)
        self.down = down_factor(dim_in, config.rank, 1.0 / math.sqrt(max(dim_in, 1)))
        self.up = up_factor(config.rank, spec.irreps_out.dim)

    def modulate(self, y: torch.Tensor, operands: list[torch.Tensor]) -> torch.Tensor:
        return y + self.scaling * (operands[0] @ self.down) @ self.up
