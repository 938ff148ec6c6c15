"""Backend for ``torch.nn.Linear`` (weight stored ``(out, in)``).

``nn.Linear`` mixes the channels of its last axis, whatever the features are: its input is
invariant only where the model's structure proves it (an ``nn.Sequential`` next to a
parity-breaking activation, :func:`~peft_equi.core.invariance.sequential_proof`) or the
config declares it.  Subclasses that override ``forward`` (schnetpack's ``Dense``, with an
activation inside) are refused: the adapted layer runs ``F.linear`` and their code would be lost.

The canonical weight is ``(in, out)``; the effective weight is handed to ``F.linear`` back
in the module's own contiguous ``(out, in)`` layout.  A transposed view would be numerically
the same matrix, but BLAS libraries pick another kernel for it (MKL: results differ in the
last bit), so an adapter whose update is zero would not reproduce the base layer exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peft_equi.core.adapted_layer import common_refusal
from peft_equi.core.invariance import sequential_proof
from peft_equi.core.layouts import DenseLayer
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerSpec, dense_spec


@register_backend
class TorchLinear(DenseLayer):
    """``torch.nn.Linear``: ``y = x W^T + b``; canonical weight is ``W^T`` flattened ``(in, out)``.
    Adapted, it is called as ``layer(input)`` (TorchScript-compatible)."""

    name = "torch.linear"
    layer_class = ("torch", "Linear")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        if isinstance(module, nn.Linear) and not cls.matches(module):
            return common_refusal(module, cls.layer_class)
        return super().refusal(module)

    @classmethod
    def invariant_input(cls, module, ancestors):
        return sequential_proof(module, ancestors)

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        return dense_spec(module.in_features, module.out_features, 1.0, bias=module.bias is not None)

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        self.in_features, self.out_features = int(base_layer.in_features), int(base_layer.out_features)

    def layer_weight(self) -> torch.Tensor:
        return self.base_layer.weight.t().reshape(-1)

    def stored_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The flat canonical ``(in, out)`` weight as the module stores it: contiguous ``(out, in)``."""
        return weight.reshape(self.in_features, self.out_features).t().contiguous()

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear's argument name
        if not self.adapter_enabled:
            return self.base_layer(input)
        return self.adapted(input)

    def adapted(self, input: torch.Tensor) -> torch.Tensor:
        """``F.linear`` with the effective weight and bias, then the adapter's modulation."""
        self.check_input(input)
        weight, bias, output_shift = self.effective_parameters()
        if weight is None:
            y = F.linear(input, self.base_layer.weight, self.base_layer.bias)
        else:
            y = F.linear(input, self.stored_weight(weight), bias)
        return self.finish(y, output_shift, [input])
