"""BitFit: train biases only."""

from peft_equi.adapters.bitfit.config import BitfitConfig
from peft_equi.adapters.bitfit.layer import BitfitAdapter

__all__ = ["BitfitAdapter", "BitfitConfig"]
