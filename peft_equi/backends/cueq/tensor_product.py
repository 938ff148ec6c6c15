"""Backend for ``cuet.FullyConnectedTensorProduct``: ``uvw`` paths in e3nn's order and normalisation."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.backends.cueq import common
from peft_equi.core.irreps import Irreps
from peft_equi.core.layouts import FlatWeightLayer
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerKind, LayerSpec


@register_backend
class CueFullyConnectedTensorProduct(FlatWeightLayer):
    """``cuet.FullyConnectedTensorProduct`` with internal weights.

    A path's coefficient tensor has the Clebsch-Gordan coefficients times the path
    normalisation; its Frobenius norm equals e3nn's ``path_weight``.  Adapted, it is called as
    ``layer(x1, x2)`` (TorchScript-compatible): an effective weight goes through the layer's own
    polynomial ``f``; input-dependent adapters read the operands reordered into the output layout
    (the spec's).
    """

    name = "cueq.tensor_product"
    layer_class = ("cuequivariance_torch", "FullyConnectedTensorProduct")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (
            all(common.is_cue_irreps(getattr(module, a, None)) for a in ("irreps_in1", "irreps_in2", "irreps_out"))
            and all(hasattr(module, a) for a in ("transpose_in1", "transpose_in2", "transpose_out", "f"))
            and common.has_internal_weight(module)
            and common.polynomial(module).subscripts == "uvw,iu,jv,kw+ijk"
        )

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        return LayerSpec(
            LayerKind.TENSOR_PRODUCT,
            (Irreps(module.irreps_in1), Irreps(module.irreps_in2)),
            Irreps(module.irreps_out),
            common.weight_paths(module),
            common.layout_of(module.transpose_out.target),
        )

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        target = common.layout_of(base_layer.transpose_out.target)
        source1 = common.layout_of(base_layer.transpose_in1.source)
        source2 = common.layout_of(base_layer.transpose_in2.source)
        self.reorder_x1, self.reorder_x2 = source1 is not target, source2 is not target
        order1 = common.layout_order(Irreps(base_layer.irreps_in1), source1, target)
        order2 = common.layout_order(Irreps(base_layer.irreps_in2), source2, target)
        self.register_buffer("x1_order", order1, persistent=False)
        self.register_buffer("x2_order", order2, persistent=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x1, x2)
        weight, _, output_shift = self.effective_parameters()
        if weight is None:
            y = self.base_layer(x1, x2)
        else:
            layer = self.base_layer
            inputs = [weight.reshape(1, -1), layer.transpose_in1(x1), layer.transpose_in2(x2)]
            y = layer.transpose_out(layer.f(inputs)[0])
        operands: list[torch.Tensor] = []
        if self.adapter.input_dependent:  # (reordering the inputs is a feature-sized op: only when read)
            operands = [
                x1.index_select(-1, self.x1_order) if self.reorder_x1 else x1,
                x2.index_select(-1, self.x2_order) if self.reorder_x2 else x2,
            ]
        return self.finish(y, output_shift, operands)
