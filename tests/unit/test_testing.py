"""peft_equi.testing: irreps and layout read from a spec or a layer, per-dtype tolerances, a precise Wigner D,
random irreps."""

import pytest
import torch
from contract_cases import LAYERS_BY_NAME
from e3nn import o3
from models import LINEAR_IN, LINEAR_OUT

import peft_equi
from peft_equi.testing import (
    DEFAULT_ATOL,
    assert_equivariant,
    e3nn_rep,
    equivariance_error,
    random_irreps,
    random_orthogonal,
    randomize_adapters,
)


def test_irreps_and_layout_come_from_the_layer_or_its_spec():
    module, _ = LAYERS_BY_NAME["cuet.Linear(ir_mul)"].make()
    model = peft_equi.get_peft_model(module, "mmea")
    randomize_adapters(model, std=0.3)
    spec = model.adapted_layers[""].spec
    assert spec.layout.value == "ir_mul"
    assert assert_equivariant(model) < 1e-12  # a PeftModel of one layer
    assert assert_equivariant(model.base_model) < 1e-12  # the adapted layer
    assert assert_equivariant(module) < 1e-12  # a module a backend describes
    assert assert_equivariant(lambda x: model(x), spec=spec) < 1e-12
    # given irreps without a spec keep the old default layout, mul_ir: wrong for this layer
    assert equivariance_error(model, spec.irreps_in, spec.irreps_out) > 1e-3
    with pytest.raises(ValueError, match="give irreps_in and irreps_out"):
        assert_equivariant(lambda x: x)


def test_default_tolerance_follows_the_output_dtype():
    assert {torch.float64: 1e-10, torch.float32: 1e-4} == DEFAULT_ATOL
    layer = o3.Linear(LINEAR_IN, LINEAR_OUT).to(torch.float32)
    error = assert_equivariant(layer, dtype=torch.float32)  # float32 inputs, float32 default tolerance
    assert 1e-10 < error <= 1e-4
    with pytest.raises(AssertionError, match=r"not equivariant: .* > 1\.0e-10 \(torch\.float32\)"):
        assert_equivariant(layer, dtype=torch.float32, atol=1e-10)
    with pytest.raises(ValueError, match="pass atol"):
        assert_equivariant(lambda x: x.to(torch.bfloat16), ["2x1o"], "2x1o")


def test_failures_point_at_the_caller():
    """``__tracebackhide__``: pytest's report starts at the line that called assert_equivariant."""
    with pytest.raises(AssertionError) as info:
        assert_equivariant(lambda x: x.flip(-1), ["1x1o+1x2e"], "1x1o+1x2e")
    names = [entry.name for entry in info.traceback.filter(info)]
    assert "assert_equivariant" not in names
    assert names[0] == "test_failures_point_at_the_caller"


def test_wigner_matrices_are_a_representation_to_rounding():
    """e3nn's D_from_matrix (torch.matrix_exp) is off by up to ~2e-10; e3nn_rep is exact to rounding."""
    irreps = "2x0e+1x1o+1x2e+1x3o+1x0o+1x1e+1x4e"
    for inversion in (False, True):
        for _ in range(20):
            r1, r2 = random_orthogonal(inversion=inversion), random_orthogonal(inversion=False)
            product = e3nn_rep(irreps, r1) @ e3nn_rep(irreps, r2)
            torch.testing.assert_close(e3nn_rep(irreps, r1 @ r2), product, atol=1e-13, rtol=0)
            torch.testing.assert_close(e3nn_rep(irreps, r1), o3.Irreps(irreps).D_from_matrix(r1), atol=1e-9, rtol=0)
            torch.testing.assert_close(e3nn_rep("1x1o", r1), r1, atol=1e-14, rtol=0)  # e3nn 0.6: (x, y, z)


def test_equivariant_adapters_are_the_registered_ones_but_the_ablation():
    from peft_equi.testing import equivariant_adapters

    assert equivariant_adapters() == ["bitfit", "elora", "film", "lora", "mmea"]
    assert set(peft_equi.list_adapters()) - set(equivariant_adapters()) == {"conventional"}


def test_random_irreps_are_seeded_and_span_their_ranges():
    assert random_irreps(3) == random_irreps(3)
    draws = [random_irreps(seed, lmax=3, mul_max=4, max_blocks=4) for seed in range(200)]
    assert {len(irreps) for irreps in draws} == {1, 2, 3, 4}
    blocks = [block for irreps in draws for block in irreps]
    assert {block.mul for block in blocks} == {1, 2, 3, 4}
    assert {(block.ir.l, block.ir.p) for block in blocks} == {(degree, p) for degree in range(4) for p in (1, -1)}
    assert any(len({block.ir for block in irreps}) < len(irreps) for irreps in draws)  # repeats stay blocks
