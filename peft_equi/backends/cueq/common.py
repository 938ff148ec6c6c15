"""What the cuequivariance backends share: layouts, duck typing, running ``f`` with a given weight."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_equi.core.irreps import Irreps, Layout


def layout_of(value: Any) -> Layout:
    """``cue.IrrepsLayout`` (``mul_ir`` / ``ir_mul``; named ``.name``) as a :class:`Layout`."""
    return Layout(getattr(value, "name", str(value)))


def convert_layout(x: torch.Tensor, irreps: Irreps, source: Layout, target: Layout) -> torch.Tensor:
    """Features of ``irreps`` from layout ``source`` to ``target`` (transposes each block)."""
    if source is target:
        return x
    parts, start = [], 0
    for block in irreps:
        rows, cols = (block.mul, block.ir.dim) if source is Layout.MUL_IR else (block.ir.dim, block.mul)
        piece = x[..., start : start + block.dim].reshape(*x.shape[:-1], rows, cols)
        parts.append(piece.transpose(-1, -2).reshape(*x.shape[:-1], block.dim))
        start += block.dim
    return torch.cat(parts, dim=-1)


def layout_order(irreps: Irreps, source: Layout, target: Layout) -> torch.Tensor:
    """Indices ``p`` with ``convert_layout(x, irreps, source, target) == x[..., p]`` (a gather, exact)."""
    return convert_layout(torch.arange(irreps.dim), irreps, source, target)


def is_cue_irreps(irreps: Any) -> bool:
    """Duck-typed ``cue.Irreps``."""
    return hasattr(irreps, "irrep_class") and hasattr(irreps, "muls")


def has_internal_weight(module: nn.Module) -> bool:
    """An owned ``(1, numel)`` weight (one weight class): what these backends adapt."""
    weight = getattr(module, "weight", None)
    return (
        isinstance(weight, nn.Parameter)
        and weight.dim() == 2
        and weight.shape[0] == 1
        and bool(getattr(module, "internal_weights", False))
    )


def polynomial(module: nn.Module) -> Any:
    """The segmented tensor product behind ``module.f`` (paths, segment shapes, coefficients)."""
    return module.f._polynomial_orig.operations[0][1]
