"""Options of MMEA, including the switches of the paper's ablations."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from peft_equi.core.adapter import AdapterConfig


class MmeaConfig(AdapterConfig):
    """Gate width, gain function and ablation switches (defaults: the paper's MMEA)."""

    rank: PositiveInt = Field(16, description="width r of the invariant gate")
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
        description="both: gate weight PyTorch's default nn.Linear init, gate bias 0, gain map (weight and bias) 0; "
        "'identity': the shift map starts at zero too, so the layer is unchanged at initialisation; "
        "'reference': as the MMEA reference code, shift bias 0 and shift weight PyTorch's default init "
        "(or N(0, shift_init_std^2)): not the identity at step 0",
    )
    shift_init_std: float | None = Field(
        None,
        ge=0,
        description="with init='reference': draw the shift weight from N(0, shift_init_std^2) instead of "
        "PyTorch's default (the reference 3BPA runs use 1e-3, MMEA_STD=0.001); None: PyTorch's default",
    )
    on_missing_invariants: Literal["error", "constant"] = Field(
        "error",
        description="layers without 0e input: refuse, or use a constant (learned) gate, i.e. static gains",
    )

    @model_validator(mode="after")
    def _something_to_modulate(self) -> MmeaConfig:
        if not (self.scalar_modulation or self.higher_order_modulation):
            raise ValueError("MMEA with neither scalar_modulation nor higher_order_modulation does nothing")
        if self.shift_init_std is not None and self.init != "reference":
            raise ValueError(
                "shift_init_std draws the shift weight, which init='identity' starts at zero: set init='reference'"
            )
        return self
