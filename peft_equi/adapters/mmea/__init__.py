"""MMEA: magnitude-modulated equivariant adapter (AAAI 2026, arXiv 2511.06696)."""

from peft_equi.adapters.mmea.config import MmeaConfig
from peft_equi.adapters.mmea.layer import MmeaAdapter

__all__ = ["MmeaAdapter", "MmeaConfig"]
