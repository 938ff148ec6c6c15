"""ELoRA: an independent low-rank update of every weighted path."""

from peft_equi.adapters.elora.adapter import EloraAdapter
from peft_equi.adapters.elora.config import EloraConfig

__all__ = ["EloraAdapter", "EloraConfig"]
