"""ELoRA: an independent low-rank update of every weighted path."""

from peft_equi.adapters.elora.config import EloraConfig
from peft_equi.adapters.elora.layer import EloraAdapter

__all__ = ["EloraAdapter", "EloraConfig"]
