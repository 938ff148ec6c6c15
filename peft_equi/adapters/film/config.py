"""Options of FiLM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peft_equi.adapters.base import AdapterConfig


class FilmConfig(AdapterConfig):
    """Where gamma/beta come from, and whether 0e outputs are shifted."""

    conditioning: Literal["input", "static"] = Field(
        "input",
        description="'input': gamma, beta linear in the layer's 0e input channels; "
        "'static': learned constants (mergeable)",
    )
    shift: bool = Field(True, description="add beta to the 0e outputs")
