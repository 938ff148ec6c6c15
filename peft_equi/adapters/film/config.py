"""Options of FiLM."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from peft_equi.core.adapter import AdapterConfig


class FilmConfig(AdapterConfig):
    """Conditioning, gate width, bounded gain form, and whether 0e outputs are shifted."""

    conditioning: Literal["input", "static"] = Field(
        "input",
        description="'input': gains and shifts computed from the layer's 0e input channels through a "
        "rank-r invariant gate; 'static': learned constants (mergeable)",
    )
    rank: PositiveInt = Field(
        8, description="width r of the invariant gate (conditioning='input' only; ignored when static)"
    )
    gain: Literal["exp", "one_plus"] = Field(
        "exp",
        description="bounded gain of each (l, channel): 'exp': max_gain**tanh(gamma), in [1/max_gain, max_gain]; "
        "'one_plus': 1 + (max_gain - 1) tanh(gamma), in [2 - max_gain, max_gain]",
    )
    max_gain: float = Field(
        2.0,
        gt=1.0,
        description="bound of the gains (> 1; at most 2 with gain='one_plus', so gains stay >= 0)",
    )
    shift: bool = Field(True, description="add a shift beta to the 0e outputs")
    operands: tuple[NonNegativeInt, ...] | None = Field(
        None,
        description="conditioning='input' only: which operands' 0e channels condition the gains (default: all). "
        "[1] conditions on the element one-hot where a layer takes it as second operand (MACE's symmetric "
        "contraction and skip tensor product, NequIP's self-connection); layers whose selected operands "
        "have no 0e channel are refused",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FilmConfig:
        if self.gain == "one_plus" and self.max_gain > 2.0:
            raise ValueError("gain='one_plus' needs max_gain <= 2 (its lower bound 2 - max_gain must be >= 0)")
        if self.conditioning == "static" and self.operands is not None:
            raise ValueError("operands selects what conditions the gains; it has no meaning with conditioning='static'")
        if self.operands is not None and len(set(self.operands)) != len(self.operands):
            raise ValueError(f"operands lists an operand twice: {list(self.operands)}")
        return self

    @property
    def gain_amplitude(self) -> float:
        """The amplitude ``lambda`` in ``exp(lambda tanh gamma)`` or ``1 + lambda tanh gamma``: the bound
        ``max_gain`` in that form."""
        return math.log(self.max_gain) if self.gain == "exp" else self.max_gain - 1.0
