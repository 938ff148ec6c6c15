"""Equivariant LoRA: a bottleneck of ``rank`` copies of each irrep."""

from peft_equi.adapters.lora.adapter import LoraAdapter
from peft_equi.adapters.lora.config import LoraConfig

__all__ = ["LoraAdapter", "LoraConfig"]
