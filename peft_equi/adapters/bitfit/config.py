"""Options of BitFit."""

from __future__ import annotations

from pydantic import Field

from peft_equi.core.adapter import AdapterConfig


class BitfitConfig(AdapterConfig):
    """Whether the layer's own biases are unfrozen as well."""

    train_existing: bool = Field(True, description="also train the biases the layer already has")
