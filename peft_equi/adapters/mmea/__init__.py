"""MMEA: magnitude-modulated equivariant adapter (AAAI 2026, arXiv 2511.06696)."""

from peft_equi.adapters.mmea.adapter import MmeaAdapter
from peft_equi.adapters.mmea.config import MmeaConfig

__all__ = ["MmeaAdapter", "MmeaConfig"]
