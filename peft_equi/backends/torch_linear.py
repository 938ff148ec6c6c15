"""Backend for ``torch.nn.Linear`` on invariant features (weight stored ``(out, in)``).

The canonical weight is ``(in, out)``; the effective weight is handed to ``F.linear`` back
in the module's own contiguous ``(out, in)`` layout.  A transposed view would be numerically
the same matrix, but BLAS libraries pick another kernel for it (MKL: results differ in the
last bit), so an adapter whose update is zero would not reproduce the base layer exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peft_equi.backends.base import DenseBackend, copy_into
from peft_equi.registry import register_backend
from peft_equi.spec import LayerSpec, dense_spec


@register_backend
class TorchLinear(DenseBackend):
    """``torch.nn.Linear``: ``y = x W^T + b``; canonical weight is ``W^T`` flattened ``(in, out)``."""

    name = "torch.linear"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def describe(self, module: nn.Module) -> LayerSpec:
        return dense_spec(module.in_features, module.out_features, 1.0, bias=module.bias is not None)

    def weight(self, module: nn.Module) -> torch.Tensor:
        return module.weight.t().reshape(-1)

    def forward(self, module, args, kwargs, weight, bias):
        (x,) = self.operands(module, args, kwargs)
        if weight is None:
            return F.linear(x, module.weight, module.bias)
        return F.linear(x, _module_layout(module, weight), bias)

    def write(self, module, weight, bias):
        copy_into(module.weight, _module_layout(module, weight))
        if bias is not None:
            copy_into(module.bias, bias)


def _module_layout(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The flat canonical ``(in, out)`` weight as the module stores it: contiguous ``(out, in)``."""
    return weight.reshape(module.in_features, module.out_features).t().contiguous()
