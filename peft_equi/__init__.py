"""peft-equi: parameter-efficient fine-tuning of equivariant graph neural networks.

.. code-block:: python

    >>> import tempfile
    >>> import peft_equi
    >>> from e3nn import o3
    >>> base, fresh_base = o3.Linear("4x0e+2x1o", "4x0e+2x1o"), o3.Linear("4x0e+2x1o", "4x0e+2x1o")
    >>> fresh_base.load_state_dict(base.state_dict())
    <All keys matched successfully>
    >>> model = peft_equi.get_peft_model(base, peft_equi.LoraConfig(rank=2))  # or (base, "lora", rank=2)
    >>> model.print_trainable_parameters(per_layer=False)
    trainable params: 24 || all params: 44 || trainable%: 54.5455
      lora                     24
    >>> # ... train
    >>> directory = model.save_pretrained(tempfile.mkdtemp() + "/my-adapter")
    >>> model = peft_equi.PeftModel.from_pretrained(fresh_base, directory)
    >>> sorted(model.adapter_state_dict())
    ['adapters.lora_A.0_0e', 'adapters.lora_A.1_1o', 'adapters.lora_B.0', 'adapters.lora_B.1']
"""

from __future__ import annotations

# the built-in adapters, backends and presets register themselves on import (the core names none of them)
import peft_equi.backends
import peft_equi.families.mace.presets  # noqa: F401
from peft_equi.adapters import (
    BitfitConfig,
    ConventionalConfig,
    EloraConfig,
    FilmConfig,
    LoraConfig,
    MmeaConfig,
)
from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.adapter import Adapter, AdapterConfig
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
from peft_equi.tuner.model import PeftModel, get_peft_model, inject_adapter_in_model, merge_adapters
from peft_equi.tuner.state_dict import get_peft_model_state_dict, set_peft_model_state_dict
from peft_equi.version import __version__


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
    "__version__",
    "discover",
    "format_inspection",
    "get_peft_model",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "inspect_model",
    "list_adapters",
    "list_backends",
    "list_presets",
    "merge_adapters",
    "register_adapter",
    "register_backend",
    "register_preset",
    "set_peft_model_state_dict",
    "to_cueq",
    "to_e3nn",
]
