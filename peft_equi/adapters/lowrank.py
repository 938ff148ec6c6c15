"""Low-rank factors ``A (fan_in, r)``, ``B (r, fan_out)`` with the LoRA initialisation."""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath


def down_factor(fan_in: int, rank: int, init_std: float) -> nn.Parameter:
    """``A ~ N(0, init_std^2)`` of shape ``(fan_in, rank)``."""
    return nn.Parameter(torch.randn(fan_in, rank) * init_std)


def coupling_paths(spec: LayerSpec, path: WeightPath) -> int | None:
    """Number of coupling paths ``P`` of a MACE contraction path ``(n_elements, P, channels)``; else ``None``."""
    return path.shape[1] if spec.kind is LayerKind.CONTRACTION and len(path.shape) == 3 else None


def up_factor(rank: int, fan_out: int) -> nn.Parameter:
    """``B = 0`` of shape ``(rank, fan_out)``, so that ``A @ B = 0`` at initialisation."""
    return nn.Parameter(torch.zeros(rank, fan_out))


def scaling(rank: int, alpha: float | None) -> float:
    """LoRA scaling ``alpha / rank`` (``alpha`` defaults to ``rank``: scaling 1)."""
    return 1.0 if alpha is None else alpha / rank


def selected_paths(spec: LayerSpec, patterns: list[str] | None) -> list[bool]:
    """For each path of ``spec``: whether its name matches one of the glob ``patterns`` (``None``: all)."""
    if patterns is None:
        return [True] * len(spec.paths)
    return [any(fnmatch.fnmatchcase(path.name, p) for p in patterns) for path in spec.paths]


def unselected_reason(spec: LayerSpec, patterns: list[str] | None) -> str | None:
    """The message for a ``paths`` option that selects none of the layer's paths, or ``None``."""
    if any(selected_paths(spec, patterns)):
        return None
    return f"no path matches {patterns} (paths: {', '.join(p.name for p in spec.paths)})"


def assemble(blocks: list[torch.Tensor], sources: list[int], numels: list[int]) -> torch.Tensor:
    """The flat canonical weight update: path ``k`` is ``blocks[sources[k]]`` flattened, or ``numels[k]``
    zeros where ``sources[k] < 0`` (TorchScript-compatible; ``blocks`` must not be empty)."""
    parts: list[torch.Tensor] = []
    for k, source in enumerate(sources):
        if source < 0:
            parts.append(blocks[0].new_zeros(numels[k]))
        else:
            parts.append(blocks[source].reshape(-1))
    return torch.cat(parts)
