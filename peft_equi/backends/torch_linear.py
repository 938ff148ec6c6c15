"""Backend for ``torch.nn.Linear`` on invariant features (weight stored ``(out, in)``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peft_equi.backends.base import Backend, copy_into
from peft_equi.registry import register_backend
from peft_equi.spec import LayerSpec, dense_spec


@register_backend
class TorchLinear(Backend):
    """``torch.nn.Linear``: ``y = x W^T + b``; canonical weight is ``W^T`` flattened ``(in, out)``."""

    name = "torch.linear"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def describe(self, module: nn.Module) -> LayerSpec:
        return dense_spec(module.in_features, module.out_features, 1.0, bias=module.bias is not None)

    def weight(self, module: nn.Module) -> torch.Tensor:
        return module.weight.t().reshape(-1)

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        return module.bias

    def bias_parameter_names(self, module: nn.Module) -> list[str]:
        return ["bias"] if module.bias is not None else []

    def operands(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return (args[0] if args else kwargs["input"],)

    def forward(self, module, args, kwargs, weight, bias):
        (x,) = self.operands(module, args, kwargs)
        if weight is None:
            return F.linear(x, module.weight, module.bias)
        return F.linear(x, weight.reshape(module.in_features, module.out_features).t(), bias)

    def write(self, module, weight, bias):
        copy_into(module.weight, weight.reshape(module.in_features, module.out_features).t())
        if bias is not None:
            copy_into(module.bias, bias)
