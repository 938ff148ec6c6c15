"""Backend for ``cuet.Linear``: same paths, block shapes and path weights as e3nn's ``o3.Linear``."""

from __future__ import annotations

import math

import numpy as np
from torch import nn

from peft_equi.backends.base import FlatWeightBackend
from peft_equi.backends.cueq.common import (
    convert_layout,
    has_internal_weight,
    is_cue_irreps,
    layout_of,
    operand,
    polynomial,
)
from peft_equi.irreps import Irreps
from peft_equi.registry import register_backend
from peft_equi.spec import LayerKind, LayerSpec, WeightPath


@register_backend
class CueLinear(FlatWeightBackend):
    """``cuet.Linear`` with internal weights; the effective weight goes through the layer's own ``f``."""

    name = "cueq.linear"

    def matches(self, module: nn.Module) -> bool:
        return (
            is_cue_irreps(getattr(module, "irreps_in", None))
            and is_cue_irreps(getattr(module, "irreps_out", None))
            and all(hasattr(module, a) for a in ("transpose_in", "transpose_out", "f"))
            and has_internal_weight(module)
            and polynomial(module).subscripts == "uv,iu,iv"
        )

    def describe(self, module: nn.Module) -> LayerSpec:
        stp = polynomial(module)
        paths, offset = [], 0
        for path in stp.paths:
            segment, i_in, i_out = path.indices
            shape = tuple(int(s) for s in stp.operands[0].segments[segment])
            weight = float(np.asarray(path.coefficients))
            paths.append(WeightPath((i_in,), i_out, shape, offset, weight, f"{i_in}->{i_out}"))
            offset += math.prod(shape)
        layout = layout_of(module.transpose_out.target)
        return LayerSpec(LayerKind.LINEAR, (Irreps(module.irreps_in),), Irreps(module.irreps_out), tuple(paths), layout)

    def operands(self, module, args, kwargs):
        x = operand(args, kwargs, 0, "x")
        source, target = layout_of(module.transpose_in.source), layout_of(module.transpose_out.target)
        return (convert_layout(x, Irreps(module.irreps_in), source, target),)

    def forward(self, module, args, kwargs, weight, bias):
        x = operand(args, kwargs, 0, "x")
        if weight is None:
            return module(x)
        return module.transpose_out(module.f([weight.reshape(1, -1), module.transpose_in(x)])[0])
