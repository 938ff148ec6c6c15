"""Equivariant LoRA: a bottleneck of ``rank`` copies of each irrep."""

from peft_equi.adapters.lora.config import LoraConfig
from peft_equi.adapters.lora.layer import LoraAdapter

__all__ = ["LoraAdapter", "LoraConfig"]
