"""A conventional (non-equivariant) dense bottleneck adapter, for ablations."""

from peft_equi.adapters.conventional.adapter import ConventionalAdapter
from peft_equi.adapters.conventional.config import ConventionalConfig

__all__ = ["ConventionalAdapter", "ConventionalConfig"]
