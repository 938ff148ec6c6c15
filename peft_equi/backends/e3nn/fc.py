"""Backend for the layers of e3nn ``nn.FullyConnectedNet`` (``_Layer``: weight stored ``(in, out)``)."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.core.invariance import activation_name, breaks_parity, siblings
from peft_equi.core.layouts import FlatWeightLayer
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerSpec, dense_spec


def _divisor(module: nn.Module) -> float:
    """e3nn divides the weight by this (the same float operation, for bit-identical outputs)."""
    if module.act is not None:
        return (module.h_in * module.var_in) ** 0.5
    return (module.h_in * module.var_in / module.var_out) ** 0.5


@register_backend
class E3nnFullyConnectedLayer(FlatWeightLayer):
    """One layer of ``e3nn.nn.FullyConnectedNet``.

    It computes ``act(x @ W / sqrt(h_in var_in)) * sqrt(var_out)`` (or, without activation,
    ``x @ W / sqrt(h_in var_in / var_out)``); the division is the path weight.  Adapted, it is
    called as ``layer(x)`` (TorchScript-compatible): the linear part runs with the layer's own
    float operations (bit-identical to e3nn's at zero update), adapters see the pre-activation,
    then e3nn's activation and ``sqrt(var_out)`` follow.
    """

    name = "e3nn.fc"
    layer_class = ("e3nn", "_Layer")

    @classmethod
    def invariant_input(cls, module, ancestors):
        """Proven when the layer's own activation, or the previous layer's (whose output it reads),
        breaks parity (:mod:`peft_equi.core.invariance`): e3nn applies it elementwise."""
        if module.act is not None and breaks_parity(module.act):
            return f"its output goes into its activation {activation_name(module.act)}, equivariant on 0e only"
        layers, position = siblings(module, ancestors)
        previous = layers[position - 1] if position > 0 else None
        act = getattr(previous, "act", None)
        if act is not None and breaks_parity(act):
            name = activation_name(act)
            return f"its input comes out of the previous layer's activation {name}, equivariant on 0e only"
        return None

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        return (
            all(hasattr(module, a) for a in ("h_in", "h_out", "var_in", "var_out", "act"))
            and isinstance(weight, nn.Parameter)
            and tuple(weight.shape) == (module.h_in, module.h_out)
        )

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        return dense_spec(int(module.h_in), int(module.h_out), 1.0 / _divisor(module))

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        self.h_in, self.h_out = int(base_layer.h_in), int(base_layer.h_out)
        self.divisor = float(_divisor(base_layer))
        self.output_scale = float(base_layer.var_out**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        self.check_input(x)
        weight, _, output_shift = self.effective_parameters()
        if weight is None:
            y = x @ (self.base_layer.weight / self.divisor)
        else:
            y = x @ (weight.reshape(self.h_in, self.h_out) / self.divisor)
        y = self.finish(y, output_shift, [x])
        if self.base_layer.act is None:
            return y
        return self.base_layer.act(y) * self.output_scale
