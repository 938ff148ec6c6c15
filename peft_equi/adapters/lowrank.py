"""Low-rank factors ``A (fan_in, r)``, ``B (r, fan_out)`` with the LoRA initialisation."""

from __future__ import annotations

import torch
from torch import nn


def down_factor(fan_in: int, rank: int, init_std: float) -> nn.Parameter:
    """``A ~ N(0, init_std^2)`` of shape ``(fan_in, rank)``."""
    return nn.Parameter(torch.randn(fan_in, rank) * init_std)


def up_factor(rank: int, fan_out: int) -> nn.Parameter:
    """``B = 0`` of shape ``(rank, fan_out)``, so that ``A @ B = 0`` at initialisation."""
    return nn.Parameter(torch.zeros(rank, fan_out))


def scaling(rank: int, alpha: float | None) -> float:
    """LoRA scaling ``alpha / rank`` (``alpha`` defaults to ``rank``: scaling 1)."""
    return 1.0 if alpha is None else alpha / rank
