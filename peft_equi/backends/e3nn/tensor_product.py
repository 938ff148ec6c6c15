"""Backend for e3nn ``o3.TensorProduct`` (``FullyConnectedTensorProduct`` etc.) with internal weights."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.backends.e3nn.linear import has_internal_flat_weight
from peft_equi.core.irreps import Irreps
from peft_equi.core.layouts import FlatWeightLayer
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath

# Connection modes whose weight block ends in the output block's channels.
_OUTPUT_LAST = {"uvw", "uuw", "uvv", "uuu"}


def _is_tensor_product(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("irreps_in1", "irreps_in2", "irreps_out")) and isinstance(
        getattr(module, "instructions", None), list
    )


def _unsupported_modes(module: nn.Module) -> list[str]:
    modes = {getattr(ins, "connection_mode", None) for ins in module.instructions if getattr(ins, "has_weight", False)}
    return sorted(str(mode) for mode in modes - _OUTPUT_LAST)


@register_backend
class E3nnTensorProduct(FlatWeightLayer):
    """``e3nn.o3.TensorProduct``: weights of paths with ``has_weight``, blocks of ``path_shape``.

    Supported connection modes: ``uvw`` (fully connected, blocks ``(mul1, mul2, mul_out)``),
    ``uuw``, ``uvv`` and ``uuu``.  Layers using other modes are not offered for adaptation.
    Adapted, it is called as ``layer(x, y)`` (TorchScript-compatible).
    """

    name = "e3nn.tensor_product"
    layer_class = ("e3nn", "TensorProduct")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return _is_tensor_product(module) and not _unsupported_modes(module) and has_internal_flat_weight(module)

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        modes = _unsupported_modes(module) if _is_tensor_product(module) and has_internal_flat_weight(module) else []
        if modes:
            return (
                f"{cls.name}: its weighted instructions use connection mode(s) {', '.join(modes)}, whose weight "
                f"blocks do not end in the output channels (supported: {', '.join(sorted(_OUTPUT_LAST))})"
            )
        return super().refusal(module)

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
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

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x, y)
        weight, _, output_shift = self.effective_parameters()
        out = self.base_layer(x, y, weight)  # weight=None: the layer's own
        return self.finish(out, output_shift, [x, y])
