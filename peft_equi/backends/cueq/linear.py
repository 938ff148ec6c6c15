"""Backend for ``cuet.Linear``: same paths, block shapes and path weights as e3nn's ``o3.Linear``."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.backends.cueq.common import (
    has_internal_weight,
    is_cue_irreps,
    layout_of,
    layout_order,
    polynomial,
    weight_paths,
)
from peft_equi.core.irreps import Irreps
from peft_equi.core.layouts import FlatWeightLayer
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerKind, LayerSpec


@register_backend
class CueLinear(FlatWeightLayer):
    """``cuet.Linear`` with internal weights.  Adapted, it is called as ``layer(x)`` (TorchScript-compatible):
    an effective weight goes through the layer's own polynomial ``f``; input-dependent adapters read
    ``x`` reordered into the output layout (the spec's).
    """

    name = "cueq.linear"
    layer_class = ("cuequivariance_torch", "Linear")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return (
            is_cue_irreps(getattr(module, "irreps_in", None))
            and is_cue_irreps(getattr(module, "irreps_out", None))
            and all(hasattr(module, a) for a in ("transpose_in", "transpose_out", "f"))
            and has_internal_weight(module)
            and polynomial(module).subscripts == "uv,iu,iv"
        )

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        layout = layout_of(module.transpose_out.target)
        return LayerSpec(
            LayerKind.LINEAR, (Irreps(module.irreps_in),), Irreps(module.irreps_out), weight_paths(module), layout
        )

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        source, target = layout_of(base_layer.transpose_in.source), layout_of(base_layer.transpose_out.target)
        self.reorder_input = source is not target
        order = layout_order(Irreps(base_layer.irreps_in), source, target)
        self.register_buffer("input_order", order, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        weight, _, output_shift = self.effective_parameters()
        if weight is None:
            y = self.base_layer(x)
        else:
            layer = self.base_layer
            y = layer.transpose_out(layer.f([weight.reshape(1, -1), layer.transpose_in(x)])[0])
        operands: list[torch.Tensor] = []
        if self.adapter.input_dependent:  # (reordering x is a feature-sized op: only when read)
            operands = [x.index_select(-1, self.input_order) if self.reorder_input else x]
        return self.finish(y, output_shift, operands)
