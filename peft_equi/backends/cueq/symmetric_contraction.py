"""Backend for ``cuet.SymmetricContraction`` (MACE's cueq symmetric contraction).

The stored weight ``(n_elements, n_rows, channels)`` holds, along its row axis, the
contraction weights of every output irrep and correlation order.  The spec describes them in
the coupling basis of MACE's e3nn contraction, so adapters act on the same quantities, and
their trained values carry over, on both backends:

- ``original_mace=True`` (MACE built with ``use_reduced_cg=False``): the stored rows are
  already the e3nn weights, and a fixed ``projection`` maps them to the kernel's rows;
- ``original_mace=False`` (MACE's default ``use_reduced_cg=True``, and native cueq
  training): the stored rows are the kernel's own, and MACE's converters map the e3nn
  weights onto them by the matrix of ``mace.tools.cg_cueq_tools.symmetric_contraction_proj``
  (a scaled permutation: entries 1, sqrt2, sqrt3, 2, ...).  The backend takes the same
  matrix, so a weight update made in the e3nn basis reaches the kernel as mace's converter
  would map it (without mace-torch installed, the stored rows themselves are the basis).

Each group of basis rows (output block, correlation order) is one path of the spec, named
and ordered like the e3nn contraction's weight tensors (``contractions.{k}.weights_max``,
``contractions.{k}.weights.{j}``).
"""

from __future__ import annotations

import functools
import weakref

import numpy as np
import torch
from torch import nn

from peft_equi.backends.cueq.common import is_cue_irreps, layout_of, layout_order
from peft_equi.core.adapted_layer import AdaptedLayer, overwrite
from peft_equi.core.irreps import Irrep, Irreps, MulIrrep
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath

RowGroup = tuple[int, int, int, int]  # output block, correlation order, first row, rows


@functools.lru_cache(maxsize=32)
def _reduced_cg_map(irrep_class: type, irreps_in: str, irreps_out: str, degree: int) -> np.ndarray | None:
    """mace's e3nn (``use_reduced_cg=True``) -> cueq weight-row matrix, live e3nn rows only; ``None`` without mace."""
    import cuequivariance as cue

    try:
        from mace.tools.cg_cueq_tools import symmetric_contraction_proj
    except ImportError:
        return None
    _, matrix = symmetric_contraction_proj(
        cue.Irreps(irrep_class, irreps_in), cue.Irreps(irrep_class, irreps_out), list(range(1, degree + 1))
    )
    matrix = matrix[np.any(matrix != 0, axis=1)]  # rows of e3nn weights MACE zeroed (no coupling path) map to nothing
    # mace computes the entries (+-sqrt of integers) in float32: snapped to float64, so that the map and its
    # inverse undo each other to float64 precision (an adapter's base fingerprint then agrees across backends)
    squares = np.round(np.square(matrix))
    if np.allclose(np.square(matrix), squares, rtol=0, atol=1e-5):
        matrix = np.sign(matrix) * np.sqrt(squares)
    return matrix


def _basis_map(module: nn.Module) -> np.ndarray | None:
    """The matrix from the e3nn basis rows to the kernel's weight rows; ``None``: the stored rows are the basis."""
    if module.projection is not None:
        return module.projection.detach().cpu().numpy()
    single = lambda irreps: "+".join(str(ir) for _, ir in irreps)  # noqa: E731  (mul 1, as mace's converter)
    irreps_in, irreps_out = module.irreps_in, module.irreps_out
    matrix = _reduced_cg_map(irreps_in.irrep_class, single(irreps_in), single(irreps_out), module.contraction_degree)
    if matrix is not None and matrix.shape != (module.weight.shape[1],) * 2:
        raise ValueError(
            f"mace's reduced-CG contraction map has shape {matrix.shape}, the weight {module.weight.shape[1]} rows"
        )
    return matrix


def _row_labels(module: nn.Module, matrix: np.ndarray | None) -> list[tuple[int, int] | None]:
    """(output block, correlation order) of each basis row; ``None`` for rows that reach no kernel row."""
    out_block = [k for k, (_, ir) in enumerate(module.irreps_out) for _ in range(ir.dim)]
    label = {}
    for _, stp in module.etp.polynomial.operations:
        degree = stp.num_operands - 2
        for path in stp.paths:
            label[path.indices[0]] = (out_block[path.indices[-1]], degree)
    if matrix is None:
        return [label[row] for row in range(module.weight.shape[1])]
    labels = []
    for row in matrix:
        found = {label[int(c)] for c in np.nonzero(np.abs(row) > 0)[0]}
        if len(found) > 1:
            raise ValueError("a contraction weight row feeds several (irrep, order) groups")
        labels.append(found.pop() if found else None)
    return labels


# per-module caches, kept outside the modules (whose attributes TorchScript would have to type)
_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, tuple[list[RowGroup], np.ndarray | None]] = weakref.WeakKeyDictionary()


def _layout(module: nn.Module) -> tuple[list[RowGroup], np.ndarray | None]:
    """Row groups of the basis, in e3nn order (output block, then order descending), and :func:`_basis_map`."""
    cached = _LAYOUTS.get(module)
    if cached is not None:
        return cached
    matrix = _basis_map(module)
    labels = _row_labels(module, matrix)
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
    _LAYOUTS[module] = (groups, matrix)
    return groups, matrix


def row_groups(module: nn.Module) -> list[RowGroup]:
    """The contiguous row groups of the basis weight, in e3nn order (output block, then order descending)."""
    return _layout(module)[0]


class ContractionBasis(nn.Module):
    """The weight layout of one ``cuet.SymmetricContraction``, in one place: its stored rows <-> the canonical
    flat weight in the e3nn coupling basis (TorchScript-compatible).

    The basis maps of a reduced-CG layer are non-persistent buffers, rebuilt from the float64
    matrix whenever they change dtype or device (exact in every dtype, not a cast of the first one).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        groups, matrix = _layout(module)
        self.reduced = module.projection is None and matrix is not None
        self._matrix = matrix if self.reduced else None
        self.n_elements, _, self.channels = (int(n) for n in module.weight.shape)
        self.group_first = [first for *_, first, _ in groups]
        self.group_rows = [rows for *_, rows in groups]
        self.group_sizes = [self.n_elements * rows * self.channels for rows in self.group_rows]
        self.row_order = sorted(range(len(groups)), key=lambda g: self.group_first[g])  # groups by stored row
        self._set_maps(module.weight)

    def _set_maps(self, like: torch.Tensor) -> None:
        """(e3nn -> stored, stored -> e3nn) row maps in the dtype and device of ``like`` (empty when not reduced)."""
        if self._matrix is None:
            to_stored = to_basis = like.new_zeros(0, 0)
        else:
            to_stored = torch.tensor(self._matrix, dtype=like.dtype, device=like.device)
            to_basis = torch.tensor(np.linalg.inv(self._matrix), dtype=like.dtype, device=like.device)
        self.register_buffer("to_stored", to_stored, persistent=False)
        self.register_buffer("to_basis", to_basis, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._set_maps(self.to_stored)
        return self

    def canonical(self, stored: torch.Tensor) -> torch.Tensor:
        """The stored weight ``(n_elements, rows, channels)`` as the canonical flat weight (e3nn basis, path order)."""
        basis = stored
        if self.reduced:
            basis = torch.einsum("zau,ab->zbu", basis, self.to_basis)
        parts: list[torch.Tensor] = []
        for first, rows in zip(self.group_first, self.group_rows):
            parts.append(basis[:, first : first + rows].reshape(-1))
        return torch.cat(parts)

    def stored(self, weight: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """The canonical flat ``weight`` as the layer, whose stored weight is ``own``, would store it."""
        pieces = torch.split(weight, self.group_sizes)
        basis = torch.cat(
            [pieces[g].reshape(self.n_elements, self.group_rows[g], self.channels) for g in self.row_order], dim=1
        )
        if not self.reduced:
            return basis
        # own + map(weight - basis of own): the same linear map, and exactly the stored weight when unchanged
        change = basis - torch.einsum("zau,ab->zbu", own, self.to_basis)
        return own + torch.einsum("zau,ab->zbu", change, self.to_stored)


@register_backend
class CueSymmetricContraction(AdaptedLayer):
    """``cuet.SymmetricContraction`` called as ``sc(x, element_indices)``.

    Adapted, it is called as ``layer(x, indices)`` (TorchScript-compatible): the effective weight
    (e3nn coupling basis, see the module docstring) is mapped to the stored rows by the layer's
    :class:`ContractionBasis` (as merging stores it), then through the layer's ``projection``
    (if any) into its own polynomial ``f``.
    """

    name = "cueq.symmetric_contraction"
    layer_class = ("cuequivariance_torch", "SymmetricContraction")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        weight = getattr(module, "weight", None)
        needed = ("etp", "projection", "contraction_degree", "num_elements", "f", "transpose_in", "transpose_out")
        return (
            is_cue_irreps(getattr(module, "irreps_in", None))
            and all(hasattr(module, a) for a in needed)
            and isinstance(weight, nn.Parameter)
            and weight.dim() == 3
        )

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
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

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        self.basis = ContractionBasis(base_layer)
        source, target = layout_of(base_layer.transpose_in.source), layout_of(base_layer.transpose_out.target)
        self.reorder_input = source is not target
        order = layout_order(Irreps(base_layer.irreps_in), source, target)
        self.register_buffer("input_order", order, persistent=False)
        self.num_elements = int(base_layer.num_elements)

    def layer_weight(self) -> torch.Tensor:
        return self.basis.canonical(self.base_layer.weight)

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        overwrite(self.base_layer.weight, self.basis.stored(weight, self.base_layer.weight).detach())

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x, indices)
        weight, _, output_shift = self.effective_parameters()
        if weight is None:
            y = self.base_layer(x, indices)
        else:
            stored = self.basis.stored(weight, self.base_layer.weight)
            projection = self.base_layer.projection
            if projection is not None:
                stored = torch.einsum("zau,ab->zbu", stored, projection)
            layer = self.base_layer
            y = layer.transpose_out(layer.f([stored.flatten(1), layer.transpose_in(x)], input_indices={0: indices})[0])
        operands: list[torch.Tensor] = []
        if self.adapter.input_dependent:  # (feature-sized ops: only when read)
            features = x.index_select(-1, self.input_order) if self.reorder_input else x
            operands = [features, nn.functional.one_hot(indices.long(), self.num_elements).to(features.dtype)]
        return self.finish(y, output_shift, operands)
