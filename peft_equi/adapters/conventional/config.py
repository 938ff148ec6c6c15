"""Options of the conventional dense adapter."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt

from peft_equi.core.adapter import AdapterConfig


class ConventionalConfig(AdapterConfig):
    """Bottleneck width and scaling of ``y + (alpha/r) B A x``."""

    rank: PositiveInt = Field(8, description="bottleneck width")
    alpha: PositiveFloat | None = Field(None, description="scaling numerator; default: rank (scaling 1)")
