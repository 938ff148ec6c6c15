"""The zoo's tables: every model x every equivariant adapter, and what each must give.

Every case is expected *exact*: the adapter is the identity at initialisation and keeps the
model equivariant with all its trainable tensors perturbed; an adapter preset leaves alone,
with a one-line reason, each layer it cannot act on exactly (inspect_model shows them: a
dense layer whose input is not known to be invariant refuses FiLM, MMEA, BitFit and FiLM's
shift; weighted modules no backend adapts are listed "not adaptable").  :data:`LAYER_REFUSALS`
pins, per model, layers that must be refused and the reason; :data:`MODULES_LEFT_OUT` the
weighted modules listed as not adaptable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zoo import e3nn_models, mace_variants, schnetpack_models, torchmd_models

MODELS = [*e3nn_models.MODELS, *mace_variants.MODELS, *schnetpack_models.MODELS, *torchmd_models.MODELS]
BY_NAME = {model.name: model for model in MODELS}


@dataclass(frozen=True)
class AdapterCase:
    """An adapter preset and its options."""

    adapter: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.adapter + "".join(f"-{k}={v}" for k, v in self.options.items())


ADAPTERS = [
    AdapterCase("lora"),
    AdapterCase("elora"),
    AdapterCase("mmea"),
    AdapterCase("bitfit"),
    AdapterCase("film"),
    AdapterCase("film", {"conditioning": "static"}),
]

CASES = [(model, adapter) for model in MODELS for adapter in ADAPTERS]

UNKNOWN = "declare it: invariant_inputs="
#: (model, adapter) -> {layer path: what its refusal says}: layers the preset must leave alone.
LAYER_REFUSALS: dict[tuple[str, str], dict[str, str]] = {
    # PaiNN's vector mixing (atoms, 3, channels) and its filter network (unproven: no activation next to it)
    **{
        ("schnetpack.PaiNN", adapter): {
            "representation.mixing.0.mu_channel_mix": "nothing to modulate" if adapter == "mmea" else UNKNOWN,
            "representation.filter_net": UNKNOWN,
        }
        for adapter in ("mmea", "film")
    },
    ("schnetpack.PaiNN", "bitfit"): {"representation.filter_net": UNKNOWN},
    # SO3net's channel mixings act on (atoms, (l_max + 1)^2, channels): gains only, no shift
    ("schnetpack.SO3net", "film"): {"representation.mixings1.0": UNKNOWN, "representation.gatings.0.scaling": UNKNOWN},
    ("schnetpack.SO3net", "film-conditioning=static"): {"representation.gatings.0.scaling": UNKNOWN},
    ("torchmd-net equivariant transformer", "film"): {
        "representation_model.attention_layers.0.vec_proj": UNKNOWN,
        "output_model.output_network.0.vec1_proj": UNKNOWN,
    },
    ("torchmd-net TensorNet", "mmea"): {"representation_model.layers.0.linears_tensor.0": "nothing to modulate"},
    ("torchmd-net TensorNet", "film"): {"representation_model.layers.0.linears_tensor.0": UNKNOWN},
}

#: model -> {module path: what "not adaptable" says}
MODULES_LEFT_OUT: dict[str, dict[str, str]] = {
    "e3nn OddParityNet (0o, 1e, 2o, uvu, Gate, BatchNorm)": {
        "norm": "no backend recognises e3nn.nn._batchnorm.BatchNorm",
        "square": "connection mode(s) uvu",
    },
    "mace.MACE nonlinear blocks (nn.Linear radial MLP)": {
        "interactions.0.conv_tp_weights.net.1": "no backend recognises torch.nn.modules.normalization.LayerNorm",
    },
    "schnetpack.PaiNN": {"representation.embedding": "no backend recognises torch.nn.modules.sparse.Embedding"},
    "torchmd-net TensorNet": {"representation_model.out_norm": "LayerNorm"},
}
