"""cuequivariance-torch layers (naive CPU path): adapters in both layouts, MACE e3nn <-> cueq with adapters."""

from __future__ import annotations

import copy

import cuequivariance as cue
import cuequivariance_torch as cuet
import pytest
import torch
from mace_models import batch_of, build_mace, energy_forces, molecules

import peft_equi
from peft_equi.integrations.mace.cueq import to_cueq, to_e3nn
from peft_equi.testing import assert_equivariant, energy_forces_equivariance_error, randomize_adapters

IN, OUT = "8x0e+8x0e+4x1o+2x2e+3x0o+2x1e", "6x0e+4x1o+2x2e+2x0o+1x1e"
TP_IN2 = "3x0e+1x1o"
ADAPTERS = ["lora", "elora", "mmea", "bitfit", "film"]
MERGEABLE = {"lora", "elora"}


def _layer(kind: str, layout):
    irreps = lambda s: cue.Irreps("O3", s)  # noqa: E731
    if kind == "linear":
        module = cuet.Linear(irreps(IN), irreps(OUT), layout=layout, method="naive", dtype=torch.float64)
        return module, [IN], OUT
    module = cuet.FullyConnectedTensorProduct(
        irreps(OUT), irreps(TP_IN2), irreps(IN), layout=layout, method="naive", dtype=torch.float64
    )
    return module, [OUT, TP_IN2], IN


@pytest.mark.parametrize("layout", ["mul_ir", "ir_mul"])
@pytest.mark.parametrize("kind", ["linear", "tensor_product"])
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapters_on_cuet_layers(kind, layout, name):
    module, irreps_in, irreps_out = _layer(kind, getattr(cue, layout))
    (layer,) = peft_equi.discover(module)
    assert layer.backend.name == f"cueq.{kind}" and layer.spec.layout.value == layout
    args = [torch.randn(5, peft_equi.Irreps(i).dim) for i in irreps_in]
    expected = module(*args)
    model = peft_equi.get_peft_model(module, name)
    assert torch.equal(model(*args), expected)
    randomize_adapters(model, std=0.2)
    adapted = model(*args)
    assert not torch.allclose(adapted, expected)
    assert_equivariant(model, irreps_in, irreps_out, layout=layout)  # cue's O3 basis is e3nn 0.6's
    if name in MERGEABLE:
        torch.testing.assert_close(model.merge_and_unload()(*args), adapted, atol=1e-10, rtol=0)


def test_cuet_linear_spec_matches_e3nn():
    from e3nn import o3

    module, _, _ = _layer("linear", cue.ir_mul)
    (cueq_layer,) = peft_equi.discover(module)
    (e3nn_layer,) = peft_equi.discover(o3.Linear(IN, OUT))
    strip = lambda spec: [(p.inputs, p.output, p.shape, p.offset, p.name) for p in spec.paths]  # noqa: E731
    assert strip(cueq_layer.spec) == strip(e3nn_layer.spec)
    assert [p.path_weight for p in cueq_layer.spec.paths] == pytest.approx(
        [p.path_weight for p in e3nn_layer.spec.paths]
    )


@pytest.fixture(scope="module")
def mace_pair():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield build_mace("small"), batch_of(molecules(2))
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("name", ["elora", "mmea-paper", "lora"])
@pytest.mark.parametrize("layout", ["ir_mul", "mul_ir"])
def test_mace_to_cueq_and_back_keeps_adapters(mace_pair, name, layout):
    base, batch = mace_pair
    model = peft_equi.get_peft_model(copy.deepcopy(base), name)
    randomize_adapters(model, std=0.05)
    energy, forces = energy_forces(model, batch)
    cueq = to_cueq(model, layout=layout)
    backends = {layer.backend.name for layer in cueq.adapted_layers.values()}
    assert {"cueq.linear", "cueq.tensor_product", "cueq.symmetric_contraction"} <= backends
    energy_c, forces_c = energy_forces(cueq, batch)
    torch.testing.assert_close(energy_c, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(forces_c, forces, atol=1e-10, rtol=0)
    error = energy_forces_equivariance_error(lambda x: energy_forces(cueq, batch, x), batch["positions"], trials=1)
    assert error < 1e-9
    back = to_e3nn(cueq)
    torch.testing.assert_close(energy_forces(back, batch)[0], energy, atol=1e-10, rtol=0)
    assert model.adapted_layers  # the source model is left as it was


@pytest.mark.parametrize("name", ["mmea-paper", "elora"])
def test_adapted_cueq_mace_trains_a_step(mace_pair, name):
    base, batch = mace_pair
    cueq = to_cueq(peft_equi.get_peft_model(copy.deepcopy(base), name), layout="ir_mul")
    params = [p for p in cueq.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    out = cueq(dict(batch), training=True, compute_force=True)
    (out["energy"].square().sum() + out["forces"].square().sum()).backward()
    torch.optim.Adam(params, lr=1e-2).step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before))
    frozen = [p for p in cueq.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
