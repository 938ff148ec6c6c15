"""Options of the equivariant LoRA adapter."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt

from peft_equi.adapters.base import AdapterConfig


class LoraConfig(AdapterConfig):
    """``rank`` copies of each irrep in the bottleneck; update scaled by ``alpha / rank``."""

    rank: PositiveInt = Field(8, description="copies of each shared irrep in the bottleneck")
    alpha: PositiveFloat | None = Field(None, description="scaling numerator; default: rank (scaling 1)")
    init_std: float = Field(1e-3, ge=0, description="std of the normal init of A (B starts at 0)")
    paths: list[str] | None = Field(None, description="glob patterns of path names to adapt (default: all paths)")
