"""The contract on layers of random irreps (drawn as e3nn's tests draw theirs, by
``peft_equi.testing.random_irreps``), for the layer kinds that take any irreps: e3nn's
``o3.Linear`` and ``FullyConnectedTensorProduct``, cuequivariance's ``Linear`` (``ir_mul``).

For each drawn layer and each equivariant adapter case of ``contract_cases.py``, either
``test_random_irreps_refusal``: the adapter needs ``0e`` features the layer lacks (BitFit
``0e`` outputs, MMEA and input-conditioned FiLM ``0e`` inputs) and refuses with
``RuleMatchError`` saying so, the layer untouched; or ``test_random_irreps_identity_at_init``
(bit for bit) and ``test_random_irreps_equivariant_after_randomising`` (rotations and rotations
times inversion, float64).  ``test_random_irreps_cover_both_outcomes``: the seeds draw layers
that every case adapts and layers that each need refuses.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from contract_cases import ALL_LAYER_OPTIONS, DEFAULTS, AdapterCase, assert_refuses

import peft_equi
from peft_equi import Irreps
from peft_equi.testing import assert_equivariant, random_irreps, randomize_adapters

SEEDS = (0, 1, 2)
BATCH = 5


def _e3nn_linear(irreps_in: Irreps, irreps_out: Irreps) -> torch.nn.Module:
    from e3nn import o3

    return o3.Linear(str(irreps_in), str(irreps_out))


def _e3nn_tensor_product(irreps_in1: Irreps, irreps_in2: Irreps, irreps_out: Irreps) -> torch.nn.Module:
    from e3nn import o3

    return o3.FullyConnectedTensorProduct(str(irreps_in1), str(irreps_in2), str(irreps_out))


def _cuet_linear(irreps_in: Irreps, irreps_out: Irreps) -> torch.nn.Module:
    import cuequivariance as cue
    import cuequivariance_torch as cuet

    return cuet.Linear(
        cue.Irreps("O3", str(irreps_in)),
        cue.Irreps("O3", str(irreps_out)),
        layout=cue.ir_mul,
        method="naive",
        dtype=torch.get_default_dtype(),
    )


@dataclass(frozen=True)
class Kind:
    """A layer kind that takes any irreps: ``make(*irreps_in, irreps_out)``, with its operands' count,
    the largest ``l`` and the most blocks drawn (fewer for a tensor product: its paths multiply), and
    its layout."""

    name: str
    make: Callable[..., torch.nn.Module]
    operands: int
    lmax: int
    max_blocks: int
    layout: str = "mul_ir"


KINDS = [
    Kind("o3.Linear", _e3nn_linear, 1, 3, 4),
    Kind("FullyConnectedTensorProduct", _e3nn_tensor_product, 2, 2, 2),
    Kind("cuet.Linear(ir_mul)", _cuet_linear, 1, 3, 4, "ir_mul"),
]


def _has_path(irreps_in: list[Irreps], irreps_out: Irreps) -> bool:
    """Whether some output irrep is reached: equal to an input's (one operand), or in the product of two."""
    if len(irreps_in) == 1:
        return bool({b.ir for b in irreps_in[0]} & {b.ir for b in irreps_out})
    return any(
        abs(a.ir.l - b.ir.l) <= c.ir.l <= a.ir.l + b.ir.l and a.ir.p * b.ir.p == c.ir.p
        for a in irreps_in[0]
        for b in irreps_in[1]
        for c in irreps_out
    )


@dataclass(frozen=True)
class RandomLayer:
    """A layer of ``kind`` with irreps drawn from ``seed`` and the kind's name (each kind draws its own),
    redrawn until it has a path (one without any is no layer to adapt)."""

    kind: Kind
    seed: int
    irreps_in: tuple[Irreps, ...]
    irreps_out: Irreps

    @classmethod
    def draw(cls, kind: Kind, seed: int) -> RandomLayer:
        rng = random.Random(f"{kind.name}/{seed}")
        while True:
            irreps = [random_irreps(rng, lmax=kind.lmax, max_blocks=kind.max_blocks) for _ in range(kind.operands + 1)]
            if _has_path(irreps[:-1], irreps[-1]):
                return cls(kind, seed, tuple(irreps[:-1]), irreps[-1])

    def __str__(self) -> str:
        return f"{self.kind.name}-seed{self.seed}"

    def make(self) -> tuple[torch.nn.Module, list[torch.Tensor]]:
        torch.manual_seed(self.seed)
        module = self.kind.make(*self.irreps_in, self.irreps_out)
        return module, [torch.randn(BATCH, irreps.dim) for irreps in self.irreps_in]


#: What each adapter that needs 0e features needs (in the outputs or the inputs) and how its refusal says so.
NEEDS_0E: dict[str, tuple[str, str]] = {
    "bitfit": ("outputs", "bitfit needs 0e outputs"),
    "mmea": ("inputs", "mmea reads the layer's 0e input channels"),
    "film": ("inputs", "film reads the 0e channels"),  # input-conditioned: its static variant needs none
}


def _refusal(layer: RandomLayer, case: AdapterCase) -> str | None:
    """What ``case`` must say it lacks on ``layer``, or ``None`` where it adapts it."""
    need = NEEDS_0E.get(str(case))
    if need is None:
        return None
    where, message = need
    features = [layer.irreps_out] if where == "outputs" else layer.irreps_in
    return None if any(b.ir.is_invariant for irreps in features for b in irreps) else message


LAYERS = [RandomLayer.draw(kind, seed) for kind in KINDS for seed in SEEDS]
ADAPTER_CASES = [case for case in (*DEFAULTS, *ALL_LAYER_OPTIONS) if case.equivariant]
PAIRS = [(layer, case) for layer in LAYERS for case in ADAPTER_CASES]
ACCEPTED = [(layer, case) for layer, case in PAIRS if _refusal(layer, case) is None]
REFUSED = [(layer, case) for layer, case in PAIRS if _refusal(layer, case) is not None]


def _pairs(pairs: list[tuple[RandomLayer, AdapterCase]]):
    return pytest.mark.parametrize(("layer", "case"), pairs, ids=[f"{layer}-{case}" for layer, case in pairs])


def test_random_irreps_cover_both_outcomes():
    assert {str(case) for _, case in ACCEPTED} == {str(case) for case in ADAPTER_CASES}
    assert {str(case) for _, case in REFUSED} == set(NEEDS_0E)
    assert {b.ir.p for layer in LAYERS for b in layer.irreps_out} == {1, -1}


@_pairs(REFUSED)
def test_random_irreps_refusal(layer, case):
    assert_refuses(*layer.make(), case.adapter, case.options, re.escape(_refusal(layer, case)))


def _adapt(layer: RandomLayer, case: AdapterCase) -> tuple[torch.nn.Module, peft_equi.PeftModel, list[torch.Tensor]]:
    module, args = layer.make()
    return module, peft_equi.get_peft_model(copy.deepcopy(module), case.adapter, **case.options), args


@_pairs(ACCEPTED)
def test_random_irreps_identity_at_init(layer, case):
    base, model, args = _adapt(layer, case)
    expected = base(*args)
    assert torch.equal(model(*args), expected)
    with model.disable_adapter():
        assert torch.equal(model(*args), expected)


@_pairs(ACCEPTED)
def test_random_irreps_equivariant_after_randomising(layer, case):
    base, model, args = _adapt(layer, case)
    randomize_adapters(model, std=0.3)
    assert not torch.allclose(model(*args), base(*args)), "the randomised adapter changes nothing"
    assert_equivariant(model, layer.irreps_in, layer.irreps_out, args=args, layout=layer.kind.layout)
