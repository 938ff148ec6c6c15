"""What the cuequivariance backends share: layouts, duck typing, running ``f`` with a given weight."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_equi.core.irreps import Irreps, Layout
from peft_equi.core.spec import WeightPath


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


def weight_paths(module: nn.Module) -> tuple[WeightPath, ...]:
    """The weight blocks of ``module``'s polynomial, in the order of its flat weight.

    Each path's indices are ``(weight segment, input irreps..., output irrep)``; its path weight is
    the coefficient (a linear layer's one number) or the norm of the coupling coefficients.
    """
    stp = polynomial(module)
    paths, offset = [], 0
    for path in stp.paths:
        segment, *inputs, i_out = path.indices
        shape = tuple(int(s) for s in stp.operands[0].segments[segment])
        coefficients = np.asarray(path.coefficients)
        weight = float(coefficients.reshape(())) if coefficients.size == 1 else float(np.linalg.norm(coefficients))
        name = f"{','.join(str(i) for i in inputs)}->{i_out}"
        paths.append(WeightPath(tuple(inputs), i_out, shape, offset, weight, name))
        offset += math.prod(shape)
    return tuple(paths)
