"""Backend for ``torch.nn.Linear`` on invariant features (weight stored ``(out, in)``)."""

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
        return F.linear(x, weight.reshape(module.in_features, module.out_features).t(), bias)

    def write(self, module, weight, bias):
        copy_into(module.weight, weight.reshape(module.in_features, module.out_features).t())
        if bias is not None:
            copy_into(module.bias, bias)
