"""The tables the contract tests (``test_contract.py``) run: layers x adapter cases.

A new backend joins by adding ONE :class:`LayerCase` to :data:`LAYERS` (a registered
backend without a row fails ``test_every_registered_backend_has_a_layer_row``).  A new
adapter joins without any row: its default options come from the registry
(``peft_equi.list_adapters()``; ``.equivariant`` says which contract applies); option
sets that change its math go to :data:`VARIANTS`, which run on :data:`VARIANT_LAYERS` only
(to bound the run time).  Combinations an adapter must refuse go to :data:`REFUSALS`.

Layers are small and built in the default dtype (float64, the tests' default; float32 too for
identity and equivariance); cuequivariance layers use ``method="naive"`` (the CPU fallback,
slow: keep them small).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from models import LINEAR_IN, LINEAR_OUT, TP_IN1, TP_IN2, TP_OUT

import peft_equi

Args = list[torch.Tensor]
BATCH = 5


def randn(*irreps: str) -> Args:
    """Random flat features, one tensor per irreps string."""
    return [torch.randn(BATCH, peft_equi.Irreps(i).dim) for i in irreps]


@dataclass(frozen=True)
class LayerCase:
    """One layer kind: how to build and call it, and how to check it for equivariance.

    ``make()`` returns ``(module, call arguments)``.  ``irreps_in`` has one entry per call
    argument (``None``: an invariant argument passed unchanged, such as element indices or
    a one-hot); ``layout`` is the layout of the output and, unless ``layouts_in`` says
    otherwise per argument, of the inputs.  ``present``: for layers whose first argument is
    not flat features, ``(to_flat, from_flat)`` between the call's form and flat ``mul_ir``
    features, so the check rotates flat features.  ``invariant_inputs``: the config's
    declaration for a dense layer, whose module does not say its features are invariant.
    """

    name: str
    backend: str  # the registered backend that must claim the module
    make: Callable[[], tuple[torch.nn.Module, Args]]
    irreps_in: tuple[str | None, ...]
    irreps_out: str
    layout: str = "mul_ir"
    layouts_in: tuple[str | None, ...] | None = None
    present: tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None = None
    invariant_inputs: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name

    def equivariance_call(self, fn: Callable[..., Any], args: Args) -> tuple[Callable[..., Any], Args]:
        """``fn`` and its arguments as the equivariance check feeds them (flat features)."""
        if self.present is None:
            return fn, args
        to_flat, from_flat = self.present
        return (lambda x, *rest: fn(from_flat(x), *rest)), [to_flat(args[0]), *args[1:]]


@dataclass(frozen=True)
class AdapterCase:
    """An adapter and its options; ``identity_at_init=False`` for documented exceptions."""

    adapter: str
    options: dict[str, Any] = field(default_factory=dict)
    identity_at_init: bool = True

    @property
    def equivariant(self) -> bool:
        return peft_equi.ADAPTERS.get(self.adapter).equivariant

    def __str__(self) -> str:
        return self.adapter + "".join(f"-{k}={v}" for k, v in self.options.items())


def assert_refuses(module: torch.nn.Module, args: Args, adapter: str, options: dict[str, Any], match: str) -> None:
    """``get_peft_model`` refuses ``module`` with a ``RuleMatchError`` matching ``match``, and leaves it as it
    was: not wrapped, nothing frozen, the same outputs."""
    expected = module(*args)
    with pytest.raises(peft_equi.RuleMatchError, match=match):
        peft_equi.get_peft_model(module, adapter, **options)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in module.modules())
    assert all(p.requires_grad for p in module.parameters())
    assert torch.equal(module(*args), expected)


# -- layer factories (imports inside: cuequivariance, mace and nequip load only when used) --


def _e3nn_linear(biases: bool):
    def make():
        from e3nn import o3

        return o3.Linear(LINEAR_IN, LINEAR_OUT, biases=biases), randn(LINEAR_IN)

    return make


def _e3nn_tensor_product():
    from e3nn import o3

    return o3.FullyConnectedTensorProduct(TP_IN1, TP_IN2, TP_OUT), randn(TP_IN1, TP_IN2)


def _e3nn_fc(last: bool):
    def make():
        from e3nn import nn as enn

        if last:
            return enn.FullyConnectedNet([6, 9, 4]).layer1, randn("9x0e")
        return enn.FullyConnectedNet([6, 9], torch.tanh).layer0, randn("6x0e")

    return make


def _torch_linear():
    return torch.nn.Linear(6, 5), randn("6x0e")


def _schnetpack_dense():
    from zoo.schnetpack_models import import_schnetpack

    spk = import_schnetpack()
    return spk.nn.Dense(6, 5, activation=torch.nn.SiLU()), randn("6x0e")  # its input: proven by the SiLU


def _nequip(bias: bool):
    def make():
        from nequip.nn.mlp import ScalarLinearLayer

        return ScalarLinearLayer(6, 5, alpha=0.4, bias=bias), randn("6x0e")

    return make


SC_IN, SC_OUT_MACE, SC_OUT = "4x0e+4x1o+4x2e", "4x0e+4x1o+4x1e", "4x0e+4x1o"
SC_CHANNELS, SC_ELEMENTS = 4, 3
ELEMENTS = torch.tensor([0, 1, 2, 2, 1])


def _mace_contraction():
    from mace.modules.symmetric_contraction import SymmetricContraction

    # correlation 3: two lower-order weights per output irrep; MACE zeroes one of the 1e irrep's
    layer = SymmetricContraction(SC_IN, SC_OUT_MACE, correlation=3, num_elements=SC_ELEMENTS)
    one_hot = torch.nn.functional.one_hot(ELEMENTS, SC_ELEMENTS).to(torch.get_default_dtype())
    return layer, [_mace_from_flat(*randn(SC_IN)), one_hot]


def _mace_to_flat(x: torch.Tensor) -> torch.Tensor:
    """MACE's ``(n, channels, sum_l (2l+1))`` features as flat ``mul_ir`` features."""
    parts, start = [], 0
    for block in peft_equi.Irreps(SC_IN):
        parts.append(x[:, :, start : start + block.ir.dim].reshape(x.shape[0], -1))
        start += block.ir.dim
    return torch.cat(parts, dim=-1)


def _mace_from_flat(x: torch.Tensor) -> torch.Tensor:
    """Flat ``mul_ir`` features as MACE's ``(n, channels, sum_l (2l+1))``."""
    blocks = peft_equi.Irreps(SC_IN)
    parts = torch.split(x, [b.dim for b in blocks], dim=-1)
    return torch.cat([p.reshape(x.shape[0], b.mul, b.ir.dim) for p, b in zip(parts, blocks)], dim=-1)


CUE_IN, CUE_OUT, CUE_TP_IN2 = "8x0e+8x0e+4x1o+2x2e+3x0o+2x1e", "6x0e+4x1o+2x2e+2x0o+1x1e", "3x0e+1x1o"


def _cuet_linear(layout_in: str, layout_out: str):
    def make():
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        layer = cuet.Linear(
            cue.Irreps("O3", CUE_IN),
            cue.Irreps("O3", CUE_OUT),
            layout_in=getattr(cue, layout_in),
            layout_out=getattr(cue, layout_out),
            method="naive",
            dtype=torch.get_default_dtype(),
        )
        return layer, randn(CUE_IN)

    return make


def _cuet_tensor_product(layout: str):
    def make():
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        irreps = lambda s: cue.Irreps("O3", s)  # noqa: E731
        layer = cuet.FullyConnectedTensorProduct(
            irreps(CUE_OUT),
            irreps(CUE_TP_IN2),
            irreps(CUE_IN),
            layout=getattr(cue, layout),
            method="naive",
            dtype=torch.get_default_dtype(),
        )
        return layer, randn(CUE_OUT, CUE_TP_IN2)

    return make


def _cuet_contraction(original_mace: bool):
    def make():
        import cuequivariance as cue
        import cuequivariance_torch as cuet
        from mace.tools.cg import O3_e3nn

        layer = cuet.SymmetricContraction(
            cue.Irreps(O3_e3nn, SC_IN),
            cue.Irreps(O3_e3nn, SC_OUT),
            contraction_degree=2,
            num_elements=SC_ELEMENTS,
            layout=cue.ir_mul,
            original_mace=original_mace,
            dtype=torch.get_default_dtype(),
            method="naive",
        )
        return layer, [*randn(SC_IN), ELEMENTS.clone()]

    return make


LAYERS: list[LayerCase] = [
    LayerCase("o3.Linear+bias", "e3nn.linear", _e3nn_linear(True), (LINEAR_IN,), LINEAR_OUT),
    LayerCase("o3.Linear", "e3nn.linear", _e3nn_linear(False), (LINEAR_IN,), LINEAR_OUT),
    LayerCase(
        "FullyConnectedTensorProduct",
        "e3nn.tensor_product",
        _e3nn_tensor_product,
        (TP_IN1, TP_IN2),
        TP_OUT,
    ),
    LayerCase(
        "FullyConnectedNet.layer",
        "e3nn.fc",
        _e3nn_fc(False),
        ("6x0e",),
        "9x0e",
        invariant_inputs=("",),
    ),
    LayerCase(
        "FullyConnectedNet.last",
        "e3nn.fc",
        _e3nn_fc(True),
        ("9x0e",),
        "4x0e",
        invariant_inputs=("",),
    ),
    LayerCase("nn.Linear", "torch.linear", _torch_linear, ("6x0e",), "5x0e", invariant_inputs=("",)),
    LayerCase(
        "nequip.ScalarLinearLayer+bias",
        "nequip.scalar_linear",
        _nequip(True),
        ("6x0e",),
        "5x0e",
        invariant_inputs=("",),
    ),
    LayerCase(
        "nequip.ScalarLinearLayer",
        "nequip.scalar_linear",
        _nequip(False),
        ("6x0e",),
        "5x0e",
        invariant_inputs=("",),
    ),
    LayerCase("schnetpack.Dense", "schnetpack.dense", _schnetpack_dense, ("6x0e",), "5x0e"),
    # the same nn.Linear without the declaration: its features are not known (vectors too)
    LayerCase("nn.Linear(features unknown)", "torch.linear", _torch_linear, ("6x0e",), "5x0e"),
    LayerCase(
        "mace.SymmetricContraction",
        "mace.symmetric_contraction",
        _mace_contraction,
        (SC_IN, None),
        SC_OUT_MACE,
        present=(_mace_to_flat, _mace_from_flat),
    ),
    LayerCase(
        "cuet.Linear(ir_mul)",
        "cueq.linear",
        _cuet_linear("ir_mul", "ir_mul"),
        (CUE_IN,),
        CUE_OUT,
        layout="ir_mul",
    ),
    LayerCase(
        "cuet.Linear(mul_ir)",
        "cueq.linear",
        _cuet_linear("mul_ir", "mul_ir"),
        (CUE_IN,),
        CUE_OUT,
    ),
    LayerCase(
        "cuet.Linear(mul_ir->ir_mul)",
        "cueq.linear",
        _cuet_linear("mul_ir", "ir_mul"),
        (CUE_IN,),
        CUE_OUT,
        layout="ir_mul",
        layouts_in=("mul_ir",),
    ),
    LayerCase(
        "cuet.FullyConnectedTensorProduct(mul_ir)",
        "cueq.tensor_product",
        _cuet_tensor_product("mul_ir"),
        (CUE_OUT, CUE_TP_IN2),
        CUE_IN,
    ),
    LayerCase(
        "cuet.FullyConnectedTensorProduct(ir_mul)",
        "cueq.tensor_product",
        _cuet_tensor_product("ir_mul"),
        (CUE_OUT, CUE_TP_IN2),
        CUE_IN,
        layout="ir_mul",
    ),
    LayerCase(
        "cuet.SymmetricContraction(original_cg)",
        "cueq.symmetric_contraction",
        _cuet_contraction(True),
        (SC_IN, None),
        SC_OUT,
        layout="ir_mul",
    ),
    LayerCase(
        "cuet.SymmetricContraction(reduced_cg)",
        "cueq.symmetric_contraction",
        _cuet_contraction(False),
        (SC_IN, None),
        SC_OUT,
        layout="ir_mul",
    ),
]
LAYERS_BY_NAME = {layer.name: layer for layer in LAYERS}

#: Every registered adapter with its default options.
DEFAULTS = [AdapterCase(name) for name in peft_equi.list_adapters()]
#: Option sets on every layer besides the defaults: one per code path the defaults miss
#: (static FiLM: gains folded into the layer's weight and bias instead of input-dependent ones).
ALL_LAYER_OPTIONS = [AdapterCase("film", {"conditioning": "static"})]
#: Option sets beyond the defaults that change the math, run on VARIANT_LAYERS only.
VARIANTS = [
    AdapterCase("mmea", {"gain": "one_plus"}),
    AdapterCase("mmea", {"activation": "identity"}),
    AdapterCase("mmea", {"heads": "separate"}),
    AdapterCase("mmea", {"scalar_modulation": False}),
    AdapterCase("mmea", {"higher_order_modulation": False}),
    AdapterCase("mmea", {"gain_sharing": "irrep"}),
    AdapterCase("mmea", {"init": "reference"}, identity_at_init=False),  # the reference code's init
    AdapterCase("film", {"gain": "one_plus", "max_gain": 1.5}),
    AdapterCase("film", {"rank": 2, "shift": False}),
    AdapterCase("film", {"conditioning": "static", "shift": False}),
    AdapterCase("film", {"conditioning": "static", "gain": "one_plus"}),
    AdapterCase("lora", {"rank": 3, "alpha": 2.0}),
    AdapterCase("elora", {"rank": 2, "alpha": 4.0}),
    AdapterCase("bitfit", {"train_existing": False}),
    AdapterCase("conventional", {"rank": 2, "alpha": 4.0}),
]
#: A linear layer with its own biases, a two-operand tensor product without, a dense layer (0e only).
VARIANT_LAYERS = ["o3.Linear+bias", "FullyConnectedTensorProduct", "nn.Linear"]

#: (layer, adapter case) -> what the refusal (``RuleMatchError``) must say: the adapter has
#: nothing to act on in that layer.
REFUSALS: dict[tuple[str, str], str] = {
    ("o3.Linear+bias", "bitfit-train_existing=False"): "nothing to train",
    ("nn.Linear", "bitfit-train_existing=False"): "nothing to train",
    ("nn.Linear", "mmea-scalar_modulation=False"): "nothing to modulate",  # 0e outputs only
    # a dense layer nothing proves invariant: nothing may read its input or add a constant
    **{
        ("nn.Linear(features unknown)", case): "declare it: invariant_inputs=['']"
        for case in ("bitfit", "conventional", "film", "film-conditioning=static", "mmea")
    },
    # bias-free radial-network layers must map zero to zero: no bias, no shift (0e outputs only)
    **{
        (dense, adapter): "must map zero to zero"
        for dense in ("FullyConnectedNet.layer", "FullyConnectedNet.last", "nequip.ScalarLinearLayer")
        for adapter in ("bitfit", "mmea")
    },
}

CASES: list[tuple[LayerCase, AdapterCase]] = [
    (layer, case) for layer in LAYERS for case in [*DEFAULTS, *ALL_LAYER_OPTIONS]
] + [(LAYERS_BY_NAME[name], case) for name in VARIANT_LAYERS for case in VARIANTS]
