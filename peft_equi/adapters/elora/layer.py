"""ELoRA (ICML 2025): per-path low-rank weight updates (exactly mergeable).

For every weighted path ``k`` with weight block ``W_k`` seen as a matrix
``(fan_in, mul_out)`` (``(mul_in, mul_out)`` for linears, ``(mul_1 mul_2, mul_out)`` for
``uvw`` tensor-product paths, ``(in, out)`` for dense layers):

.. math:: W_k \\leftarrow W_k + \\frac{\\alpha}{r} A_k B_k, \\qquad A_k \\in \\mathbb{R}^{fan_{in} \\times r},
   \\; B_k \\in \\mathbb{R}^{r \\times mul_{out}}

added to the raw weight, before the layer's path normalisation.  Each path's output is
equivariant for any value of its weight block, so the update is equivariant.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.adapters.base import Adapter
from peft_equi.adapters.elora.config import EloraConfig
from peft_equi.adapters.lowrank import down_factor, scaling, up_factor
from peft_equi.registry import register_adapter
from peft_equi.spec import LayerSpec


@register_adapter
class EloraAdapter(Adapter):
    """Per-path LoRA.  Parameters ``elora_A.{k}`` ``(fan_in, r)``, ``elora_B.{k}`` ``(r, mul_out)``."""

    name = "elora"
    config_class = EloraConfig

    def __init__(self, spec: LayerSpec, config: EloraConfig) -> None:
        super().__init__(spec, config)
        self.scaling = scaling(config.rank, config.alpha)
        self.elora_A = nn.ParameterList()
        self.elora_B = nn.ParameterList()
        for path in spec.paths:
            self.elora_A.append(down_factor(path.fan_in, config.rank, config.init_std))
            self.elora_B.append(up_factor(config.rank, path.mul_out))

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * torch.cat([(a @ b).reshape(-1) for a, b in zip(self.elora_A, self.elora_B)])
