"""A conventional (non-equivariant) dense bottleneck adapter, for ablations."""

from peft_equi.adapters.conventional.config import ConventionalConfig
from peft_equi.adapters.conventional.layer import ConventionalAdapter

__all__ = ["ConventionalAdapter", "ConventionalConfig"]
