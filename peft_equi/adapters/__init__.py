"""Adapters: one folder per method (config + layer).  Importing registers the built-in ones."""

from peft_equi.adapters.bitfit import BitfitAdapter, BitfitConfig
from peft_equi.adapters.conventional import ConventionalAdapter, ConventionalConfig
from peft_equi.adapters.elora import EloraAdapter, EloraConfig
from peft_equi.adapters.film import FilmAdapter, FilmConfig
from peft_equi.adapters.lora import LoraAdapter, LoraConfig
from peft_equi.adapters.mmea import MmeaAdapter, MmeaConfig
from peft_equi.core.adapter import Adapter, AdapterConfig

__all__ = [
    "Adapter",
    "AdapterConfig",
    "BitfitAdapter",
    "BitfitConfig",
    "ConventionalAdapter",
    "ConventionalConfig",
    "EloraAdapter",
    "EloraConfig",
    "FilmAdapter",
    "FilmConfig",
    "LoraAdapter",
    "LoraConfig",
    "MmeaAdapter",
    "MmeaConfig",
]
