"""peft-equi: parameter-efficient fine-tuning of equivariant graph neural networks.

.. code-block:: python

    import peft_equi
    model = peft_equi.get_peft_model(base, peft_equi.MmeaConfig(rank=16))  # or (base, "mmea", rank=16)
    model.print_trainable_parameters()
    ...  # train
    model.save_pretrained("my-adapter")
    model = peft_equi.PeftModel.from_pretrained(fresh_base, "my-adapter")
"""

from __future__ import annotations

__version__ = "0.1.0"

from peft_equi.adapters import (
    BitfitConfig,
    ConventionalConfig,
    EloraConfig,
    FilmConfig,
    LoraConfig,
    MmeaConfig,
)
from peft_equi.adapters.base import Adapter, AdapterConfig
from peft_equi.backends.base import Backend
from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.config import PeftConfig, Rule
from peft_equi.core.irreps import Irrep, Irreps, Layout, MulIrrep
from peft_equi.core.plan import discover
from peft_equi.core.presets import preset_names as list_presets
from peft_equi.core.registry import ADAPTERS, BACKENDS, PRESETS, register_adapter, register_backend, register_preset
from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath
from peft_equi.energy_correction import EnergyCorrection
from peft_equi.errors import (
    AdapterLoadError,
    BaseMismatchError,
    ConfigError,
    DataError,
    EnergyShiftError,
    NotMergeableError,
    PeftEquiError,
    RuleMatchError,
    UnknownNameError,
    UnsupportedLayerError,
    UntrustedPickleError,
)
from peft_equi.families.mace.cueq import to_cueq, to_e3nn
from peft_equi.inspection import LayerReport, format_inspection, inspect_model
from peft_equi.model import PeftModel, get_peft_model, merge_adapters


def list_adapters() -> list[str]:
    """Sorted names of the registered adapters."""
    return ADAPTERS.names()


def list_backends() -> list[str]:
    """Sorted names of the registered backends (layer types)."""
    return BACKENDS.names()


__all__ = [
    "ADAPTERS",
    "BACKENDS",
    "PRESETS",
    "AdaptedLayer",
    "Adapter",
    "AdapterConfig",
    "AdapterLoadError",
    "Backend",
    "BaseMismatchError",
    "BitfitConfig",
    "ConfigError",
    "ConventionalConfig",
    "DataError",
    "EloraConfig",
    "EnergyCorrection",
    "EnergyShiftError",
    "FilmConfig",
    "Irrep",
    "Irreps",
    "LayerKind",
    "LayerReport",
    "LayerSpec",
    "Layout",
    "LoraConfig",
    "MmeaConfig",
    "MulIrrep",
    "NotMergeableError",
    "PeftConfig",
    "PeftEquiError",
    "PeftModel",
    "Rule",
    "RuleMatchError",
    "UnknownNameError",
    "UnsupportedLayerError",
    "UntrustedPickleError",
    "WeightPath",
    "discover",
    "format_inspection",
    "get_peft_model",
    "inspect_model",
    "list_adapters",
    "list_backends",
    "list_presets",
    "merge_adapters",
    "register_adapter",
    "register_backend",
    "register_preset",
    "to_cueq",
    "to_e3nn",
]
