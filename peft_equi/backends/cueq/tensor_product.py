"""Backend for ``cuet.FullyConnectedTensorProduct``: ``uvw`` paths in e3nn's order and normalisation."""

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
class CueFullyConnectedTensorProduct(FlatWeightBackend):
    """``cuet.FullyConnectedTensorProduct`` with internal weights.

    A path's coefficient tensor has the Clebsch-Gordan coefficients times the path
    normalisation; its Frobenius norm equals e3nn's ``path_weight``.
    """

    name = "cueq.tensor_product"

    def matches(self, module: nn.Module) -> bool:
        return (
            all(is_cue_irreps(getattr(module, a, None)) for a in ("irreps_in1", "irreps_in2", "irreps_out"))
            and all(hasattr(module, a) for a in ("transpose_in1", "transpose_in2", "transpose_out", "f"))
            and has_internal_weight(module)
            and polynomial(module).subscripts == "uvw,iu,jv,kw+ijk"
        )

    def describe(self, module: nn.Module) -> LayerSpec:
        stp = polynomial(module)
        paths, offset = [], 0
        for path in stp.paths:
            segment, i1, i2, i_out = path.indices
            shape = tuple(int(s) for s in stp.operands[0].segments[segment])
            weight = float(np.linalg.norm(np.asarray(path.coefficients)))
            paths.append(WeightPath((i1, i2), i_out, shape, offset, weight, f"{i1},{i2}->{i_out}"))
            offset += math.prod(shape)
        return LayerSpec(
            LayerKind.TENSOR_PRODUCT,
            (Irreps(module.irreps_in1), Irreps(module.irreps_in2)),
            Irreps(module.irreps_out),
            tuple(paths),
            layout_of(module.transpose_out.target),
        )

    def operands(self, module, args, kwargs):
        target = layout_of(module.transpose_out.target)
        x1, x2 = operand(args, kwargs, 0, "x1"), operand(args, kwargs, 1, "x2")
        return (
            convert_layout(x1, Irreps(module.irreps_in1), layout_of(module.transpose_in1.source), target),
            convert_layout(x2, Irreps(module.irreps_in2), layout_of(module.transpose_in2.source), target),
        )

    def forward(self, module, args, kwargs, weight, bias):
        x1, x2 = operand(args, kwargs, 0, "x1"), operand(args, kwargs, 1, "x2")
        if weight is None:
            return module(x1, x2)
        inputs = [weight.reshape(1, -1), module.transpose_in1(x1), module.transpose_in2(x2)]
        return module.transpose_out(module.f(inputs)[0])
