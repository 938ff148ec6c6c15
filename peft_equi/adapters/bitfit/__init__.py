"""BitFit: train biases only."""

from peft_equi.adapters.bitfit.adapter import BitfitAdapter
from peft_equi.adapters.bitfit.config import BitfitConfig

__all__ = ["BitfitAdapter", "BitfitConfig"]
