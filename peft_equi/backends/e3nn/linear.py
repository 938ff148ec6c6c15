"""Backend for e3nn ``o3.Linear`` with internal, shared weights."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer, overwrite
from peft_equi.core.irreps import Irreps
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath


def has_internal_flat_weight(module: nn.Module) -> bool:
    """True when ``module.weight`` is a 1-D Parameter owned by the module (e3nn internal weights)."""
    weight = getattr(module, "weight", None)
    return (
        bool(getattr(module, "internal_weights", False))
        and bool(getattr(module, "shared_weights", True))
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 1
        and weight.numel() > 0
    )


@register_backend
class E3nnLinear(AdaptedLayer):
    """``e3nn.o3.Linear``: flat weight of row-major ``(mul_in, mul_out)`` blocks, one per instruction.

    Bias instructions (``i_in == -1``) carry the 0e biases, stored in ``module.bias``.  Adapted, it is
    called as ``layer(features)`` (TorchScript-compatible).
    """

    name = "e3nn.linear"
    layer_class = ("e3nn", "Linear")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        instructions = getattr(module, "instructions", None)
        return (
            hasattr(module, "irreps_in")
            and hasattr(module, "irreps_out")
            and not hasattr(module, "irreps_in1")
            and isinstance(instructions, list)
            and all(hasattr(ins, "i_in") and hasattr(ins, "path_shape") for ins in instructions)
            and has_internal_flat_weight(module)
        )

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        irreps_in, irreps_out = Irreps(module.irreps_in), Irreps(module.irreps_out)
        paths, offset = [], 0
        for ins in module.instructions:
            if ins.i_in == -1:
                continue
            shape = tuple(int(s) for s in ins.path_shape)
            name = f"{ins.i_in}->{ins.i_out}"
            paths.append(WeightPath((ins.i_in,), ins.i_out, shape, offset, float(ins.path_weight), name))
            offset += paths[-1].numel
        bias_blocks = tuple(ins.i_out for ins in module.instructions if ins.i_in == -1)
        if not isinstance(getattr(module, "bias", None), nn.Parameter):
            bias_blocks = ()
        return LayerSpec(LayerKind.LINEAR, (irreps_in,), irreps_out, tuple(paths), bias_blocks=bias_blocks)

    @classmethod
    def bias_parameter_names(cls, module: nn.Module) -> list[str]:
        return ["bias"] if cls.describe(module).bias_blocks else []

    def layer_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def layer_bias(self) -> torch.Tensor | None:
        if self.has_layer_bias:
            return self.base_layer.bias
        return None

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        overwrite(self.base_layer.weight, weight)
        if bias is not None:
            overwrite(self.base_layer.bias, bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(features)
        weight, bias, output_shift = self.effective_parameters()
        y = self.base_layer(features) if weight is None else self.base_layer(features, weight, bias)
        return self.finish(y, output_shift, [features])
