"""Options of MMEA, including the switches of the paper's ablations."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from peft_equi.adapters.base import AdapterConfig


class MmeaConfig(AdapterConfig):
    """Gate width, gain function and ablation switches (defaults: the paper's MMEA)."""

    rank: PositiveInt = Field(16, description="width r of the invariant gate (bottleneck)")
    activation: Literal["silu", "identity"] = Field(
        "silu", description="gate nonlinearity; 'identity' is the 'no activation' ablation"
    )
    gain: Literal["exp", "one_plus"] = Field("exp", description="phi in y_l <- phi(gamma) y_l: exp(x) or 1 + x")
    heads: Literal["shared", "separate"] = Field(
        "shared", description="one gate for both branches (input-head reuse) or one per branch (ablation)"
    )
    scalar_modulation: bool = Field(True, description="additive shift of 0e outputs (False: ablation)")
    higher_order_modulation: bool = Field(True, description="gains on l>=1 and 0o outputs (False: ablation)")
    gain_sharing: Literal["channel", "irrep"] = Field(
        "channel", description="one gain per (l, channel), or one per output irrep type (ablation)"
    )
    init: Literal["identity", "reference"] = Field(
        "identity",
        description="'identity': all output maps start at zero; 'reference': the shift branch keeps "
        "PyTorch's default init as in the reference code (not the identity at step 0)",
    )
    on_missing_invariants: Literal["error", "constant"] = Field(
        "error",
        description="layers without 0e input: refuse, or use a constant (learned) gate, i.e. static gains",
    )

    @model_validator(mode="after")
    def _something_to_modulate(self) -> MmeaConfig:
        if not (self.scalar_modulation or self.higher_order_modulation):
            raise ValueError("MMEA with neither scalar_modulation nor higher_order_modulation does nothing")
        return self
