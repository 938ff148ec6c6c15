"""Backend for the layers of e3nn ``nn.FullyConnectedNet`` (``_Layer``: weight stored ``(in, out)``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_equi.backends.base import FlatWeightBackend
from peft_equi.registry import register_backend
from peft_equi.spec import LayerSpec, dense_spec


def _divisor(module: nn.Module) -> float:
    """e3nn divides the weight by this (the same float operation, for bit-identical outputs)."""
    if module.act is not None:
        return (module.h_in * module.var_in) ** 0.5
    return (module.h_in * module.var_in / module.var_out) ** 0.5


@register_backend
class E3nnFullyConnectedLayer(FlatWeightBackend):
    """One layer of ``e3nn.nn.FullyConnectedNet``.

    It computes ``act(x @ W / sqrt(h_in var_in)) * sqrt(var_out)`` (or, without activation,
    ``x @ W / sqrt(h_in var_in / var_out)``); the division is the path weight and the
    activation is applied in :meth:`finish`, so adapters see the pre-activation.
    """

    name = "e3nn.fc"

    def matches(self, module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return (
            all(hasattr(module, a) for a in ("h_in", "h_out", "var_in", "var_out", "act"))
            and isinstance(weight, nn.Parameter)
            and tuple(weight.shape) == (module.h_in, module.h_out)
        )

    def describe(self, module: nn.Module) -> LayerSpec:
        return dense_spec(int(module.h_in), int(module.h_out), 1.0 / _divisor(module))

    def operands(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        return (args[0] if args else kwargs["x"],)

    def forward(self, module, args, kwargs, weight, bias):
        (x,) = self.operands(module, args, kwargs)
        weight = module.weight if weight is None else weight
        return x @ (weight.reshape(module.h_in, module.h_out) / _divisor(module))

    def finish(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        if module.act is None:
            return y
        return module.act(y) * module.var_out**0.5
