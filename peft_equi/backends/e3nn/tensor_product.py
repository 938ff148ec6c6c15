"""Backend for e3nn ``o3.TensorProduct`` (``FullyConnectedTensorProduct`` etc.) with internal weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_equi.backends.base import FlatWeightBackend
from peft_equi.backends.e3nn.linear import has_internal_flat_weight
from peft_equi.irreps import Irreps
from peft_equi.registry import register_backend
from peft_equi.spec import LayerKind, LayerSpec, WeightPath

# Connection modes whose weight block ends in the output block's channels.
_OUTPUT_LAST = {"uvw", "uuw", "uvv", "uuu"}


@register_backend
class E3nnTensorProduct(FlatWeightBackend):
    """``e3nn.o3.TensorProduct``: weights of paths with ``has_weight``, blocks of ``path_shape``.

    Supported connection modes: ``uvw`` (fully connected, blocks ``(mul1, mul2, mul_out)``),
    ``uuw``, ``uvv`` and ``uuu``.  Layers using other modes are not offered for adaptation.
    """

    name = "e3nn.tensor_product"

    def matches(self, module: nn.Module) -> bool:
        instructions = getattr(module, "instructions", None)
        return (
            hasattr(module, "irreps_in1")
            and hasattr(module, "irreps_in2")
            and hasattr(module, "irreps_out")
            and isinstance(instructions, list)
            and all(getattr(ins, "connection_mode", None) in _OUTPUT_LAST for ins in instructions if ins.has_weight)
            and has_internal_flat_weight(module)
        )

    def describe(self, module: nn.Module) -> LayerSpec:
        paths, offset = [], 0
        for ins in module.instructions:
            if not ins.has_weight:
                continue
            shape = tuple(int(s) for s in ins.path_shape)
            name = f"{ins.i_in1},{ins.i_in2}->{ins.i_out}"
            paths.append(WeightPath((ins.i_in1, ins.i_in2), ins.i_out, shape, offset, float(ins.path_weight), name))
            offset += paths[-1].numel
        return LayerSpec(
            LayerKind.TENSOR_PRODUCT,
            (Irreps(module.irreps_in1), Irreps(module.irreps_in2)),
            Irreps(module.irreps_out),
            tuple(paths),
        )

    def weight(self, module: nn.Module) -> torch.Tensor:
        return module.weight

    def operands(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        names = ("x", "y")
        return tuple(args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names))

    def forward(self, module, args, kwargs, weight, bias):
        x, y = self.operands(module, args, kwargs)
        return module(x, y, weight)  # weight=None: the layer's own
