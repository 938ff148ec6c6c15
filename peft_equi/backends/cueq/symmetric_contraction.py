"""Backend for ``cuet.SymmetricContraction`` (MACE's cueq symmetric contraction).

The stored weight ``(n_elements, n_rows, channels)`` holds, along its row axis, the
contraction weights of every output irrep and correlation order; with MACE's original
coupling basis (``original_mace=True``) a fixed ``projection`` maps the stored rows to the
kernel's.  Each group of rows (output block, correlation order) is one path of the spec,
named and ordered like the e3nn contraction's weight tensors
(``contractions.{k}.weights_max``, ``contractions.{k}.weights.{j}``), so adapters and their
saved values carry over between the e3nn and cueq versions of a model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from peft_equi.backends.base import Backend, copy_into
from peft_equi.backends.cueq.common import convert_layout, is_cue_irreps, layout_of, operand
from peft_equi.irreps import Irrep, Irreps, MulIrrep
from peft_equi.registry import register_backend
from peft_equi.spec import LayerKind, LayerSpec, WeightPath

RowGroup = tuple[int, int, int, int]  # output block, correlation order, first row, rows


def _row_labels(module: nn.Module) -> list[tuple[int, int] | None]:
    """(output block, correlation order) of each stored weight row; ``None`` for rows the projection drops."""
    out_block = [k for k, (_, ir) in enumerate(module.irreps_out) for _ in range(ir.dim)]
    label = {}
    for _, stp in module.etp.polynomial.operations:
        degree = stp.num_operands - 2
        for path in stp.paths:
            label[path.indices[0]] = (out_block[path.indices[-1]], degree)
    if module.projection is None:
        return [label[row] for row in range(module.weight.shape[1])]
    projection = module.projection.detach().cpu().numpy()
    labels = []
    for row in projection:
        found = {label[int(c)] for c in np.nonzero(np.abs(row) > 0)[0]}
        if len(found) > 1:
            raise ValueError("a stored contraction weight row feeds several (irrep, order) groups")
        labels.append(found.pop() if found else None)
    return labels


def row_groups(module: nn.Module) -> list[RowGroup]:
    """The contiguous row groups of the stored weight, in e3nn order (output block, then order descending)."""
    cached = module.__dict__.get("_peft_equi_row_groups")
    if cached is not None:
        return cached
    labels = _row_labels(module)
    for i, found in enumerate(labels):  # rows the projection drops belong to their neighbours' group
        if found is None:
            neighbours = [labels[j] for j in (*range(i - 1, -1, -1), *range(i + 1, len(labels))) if labels[j]]
            labels[i] = neighbours[0]
    groups: list[RowGroup] = []
    for row, (block, degree) in enumerate(labels):
        if groups and groups[-1][:2] == (block, degree):
            groups[-1] = (block, degree, groups[-1][2], groups[-1][3] + 1)
        elif any(g[:2] == (block, degree) for g in groups):
            raise ValueError("contraction weight rows of one (irrep, order) are not contiguous")
        else:
            groups.append((block, degree, row, 1))
    groups.sort(key=lambda g: (g[0], -g[1]))
    module.__dict__["_peft_equi_row_groups"] = groups
    return groups


@register_backend
class CueSymmetricContraction(Backend):
    """``cuet.SymmetricContraction`` called as ``sc(x, element_indices)``."""

    name = "cueq.symmetric_contraction"

    def matches(self, module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        needed = ("etp", "projection", "contraction_degree", "num_elements", "f", "transpose_in", "transpose_out")
        return (
            is_cue_irreps(getattr(module, "irreps_in", None))
            and all(hasattr(module, a) for a in needed)
            and isinstance(weight, nn.Parameter)
            and weight.dim() == 3
        )

    def describe(self, module: nn.Module) -> LayerSpec:
        n_elements, _, channels = module.weight.shape
        paths, offset = [], 0
        for block, degree, _, rows in row_groups(module):
            top = degree == module.contraction_degree
            name = (
                f"contractions.{block}.weights_max"
                if top
                else f"contractions.{block}.weights.{module.contraction_degree - 1 - degree}"
            )
            paths.append(WeightPath((0, 1), block, (n_elements, rows, channels), offset, 1.0, name))
            offset += n_elements * rows * channels
        elements = Irreps([MulIrrep(n_elements, Irrep(0, 1))])
        return LayerSpec(
            LayerKind.CONTRACTION,
            (Irreps(module.irreps_in), elements),
            Irreps(module.irreps_out),
            tuple(paths),
            layout_of(module.transpose_out.target),
        )

    def weight(self, module):
        return torch.cat([module.weight[:, first : first + rows].reshape(-1) for *_, first, rows in row_groups(module)])

    def _stored(self, module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        """The canonical flat weight back in the stored ``(n_elements, rows, channels)`` order."""
        n_elements, _, channels = module.weight.shape
        pieces, start = {}, 0
        for *_, first, rows in row_groups(module):
            pieces[first] = weight[start : start + n_elements * rows * channels].reshape(n_elements, rows, channels)
            start += n_elements * rows * channels
        return torch.cat([pieces[first] for first in sorted(pieces)], dim=1)

    def operands(self, module, args, kwargs):
        x, indices = operand(args, kwargs, 0, "x"), operand(args, kwargs, 1, "indices")
        source, target = layout_of(module.transpose_in.source), layout_of(module.transpose_out.target)
        x = convert_layout(x, Irreps(module.irreps_in), source, target)
        return x, nn.functional.one_hot(indices.long(), module.num_elements).to(x.dtype)

    def forward(self, module, args, kwargs, weight, bias):
        x, indices = operand(args, kwargs, 0, "x"), operand(args, kwargs, 1, "indices")
        if weight is None:
            return module(x, indices)
        stored = self._stored(module, weight)
        if module.projection is not None:
            stored = torch.einsum("zau,ab->zbu", stored, module.projection)
        inputs = [stored.flatten(1), module.transpose_in(x)]
        return module.transpose_out(module.f(inputs, input_indices={0: indices})[0])

    def write(self, module, weight, bias):
        copy_into(module.weight, self._stored(module, weight))
