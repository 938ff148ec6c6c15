"""cuequivariance-torch (naive CPU path): the cueq spec equals e3nn's, MACE e3nn <-> cueq with adapters.

Every adapter on cuet.Linear / FullyConnectedTensorProduct (both layouts) and
SymmetricContraction (both CG bases) is in the contract tests (``test_contract.py``)."""

from __future__ import annotations

import copy

import pytest
import torch
from contract_cases import CUE_IN, CUE_OUT, LAYERS_BY_NAME
from mace_models import batch_of, build_mace, energy_forces, molecules

import peft_equi
from peft_equi.core.spec import LayerKind
from peft_equi.families.mace.cueq import _compiled_modules, to_cueq, to_e3nn
from peft_equi.testing import energy_forces_equivariance_error, randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype

MERGEABLE = {"lora", "elora"}


def test_cuet_linear_spec_matches_e3nn():
    from e3nn import o3

    module, _ = LAYERS_BY_NAME["cuet.Linear(ir_mul)"].make()
    (cueq_layer,) = peft_equi.discover(module)
    (e3nn_layer,) = peft_equi.discover(o3.Linear(CUE_IN, CUE_OUT))
    strip = lambda spec: [(p.inputs, p.output, p.shape, p.offset, p.name) for p in spec.paths]  # noqa: E731
    assert strip(cueq_layer.spec) == strip(e3nn_layer.spec)
    assert [p.path_weight for p in cueq_layer.spec.paths] == pytest.approx(
        [p.path_weight for p in e3nn_layer.spec.paths]
    )


CG_BASES = {"original_cg": False, "reduced_cg": True}


def _mace(use_reduced_cg: bool) -> torch.nn.Module:
    model = build_mace("small")
    if use_reduced_cg:  # mace-torch's default CG basis (build_mace uses the papers' original one)
        from mace.tools.scripts_utils import extract_config_mace_model

        from peft_equi.families.mace.loading import instantiate

        torch.manual_seed(0)
        model = instantiate(type(model), extract_config_mace_model(model) | {"use_reduced_cg": True}, torch.float64)
        with torch.no_grad():
            model.scale_shift.scale.fill_(0.7)
            model.scale_shift.shift.fill_(0.05)
    assert model.use_reduced_cg is use_reduced_cg
    return model


@pytest.fixture(scope="module", params=list(CG_BASES))
def mace_pair(request):
    with torch_default_dtype(torch.float64):
        yield _mace(CG_BASES[request.param]), batch_of(molecules(2))


def _copy(model):
    """A deep copy sharing the compiled polynomials (deep-copying cuet's naive ones rebuilds them: seconds)."""
    return copy.deepcopy(model, memo=_compiled_modules(model))


@pytest.fixture(scope="module")
def converted(mace_pair):
    """``get(adapter, layout)``: an e3nn MACE with random adapters and its cueq conversion, made once per CG basis."""
    base, _ = mace_pair
    cache = {}

    def get(name: str, layout: str):
        if (name, layout) not in cache:
            model = peft_equi.get_peft_model(copy.deepcopy(base), name)
            randomize_adapters(model, std=0.05)
            cache[name, layout] = model, to_cueq(model, layout=layout)
        return cache[name, layout]

    return get


@pytest.mark.parametrize("name", ["elora", "mmea-paper", "lora"])
@pytest.mark.parametrize("layout", ["ir_mul", "mul_ir"])
def test_mace_to_cueq_and_back_keeps_adapters(mace_pair, converted, name, layout):
    _, batch = mace_pair
    model, cueq = converted(name, layout)
    energy, forces = energy_forces(model, batch)
    backends = {layer.name for layer in cueq.adapted_layers.values()}
    assert {"cueq.linear", "cueq.tensor_product", "cueq.symmetric_contraction"} <= backends
    contractions = [p for p, layer in model.adapted_layers.items() if layer.spec.kind is LayerKind.CONTRACTION]
    assert contractions
    for path in contractions:  # the cueq contraction is described in the e3nn weight basis, whatever the CG basis
        e3nn_layer, cueq_layer = model.adapted_layers[path], cueq.adapted_layers[path]
        paths = lambda layer: [(p.name, p.shape, p.offset) for p in layer.spec.paths]  # noqa: E731
        assert paths(cueq_layer) == paths(e3nn_layer)
        torch.testing.assert_close(
            cueq_layer.weight_of(cueq_layer.base_layer),
            e3nn_layer.weight_of(e3nn_layer.base_layer),
            atol=1e-12,
            rtol=0,
        )
    energy_c, forces_c = energy_forces(cueq, batch)
    torch.testing.assert_close(energy_c, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(forces_c, forces, atol=1e-10, rtol=0)
    error = energy_forces_equivariance_error(lambda x: energy_forces(cueq, batch, x), batch["positions"], trials=1)
    assert error < 1e-9
    if name in MERGEABLE:  # merging writes the update into the stored (cueq-basis) weight
        merged = energy_forces(_copy(cueq).merge_and_unload(), batch)
        torch.testing.assert_close(merged[0], energy, atol=1e-10, rtol=0)
        torch.testing.assert_close(merged[1], forces, atol=1e-10, rtol=0)
    back = to_e3nn(cueq)
    energy_b, forces_b = energy_forces(back, batch)
    torch.testing.assert_close(energy_b, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(forces_b, forces, atol=1e-10, rtol=0)
    assert model.adapted_layers  # the source model is left as it was


@pytest.mark.parametrize("name", ["mmea-paper", "elora"])
def test_adapted_cueq_mace_trains_a_step(mace_pair, converted, name):
    _, batch = mace_pair
    cueq = _copy(converted(name, "ir_mul")[1])
    params = [p for p in cueq.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    out = cueq(dict(batch), training=True, compute_force=True)
    (out["energy"].square().sum() + out["forces"].square().sum()).backward()
    torch.optim.Adam(params, lr=1e-2).step()
    assert any(not torch.equal(p, b) for p, b in zip(params, before))
    frozen = [p for p in cueq.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


def test_named_adapters_survive_the_conversion(mace_pair):
    """Every named adapter, its fully trained tensors (mmea-paper's Bessel weights) and the active one carry over."""
    base, batch = mace_pair
    model = peft_equi.get_peft_model(copy.deepcopy(base), "mmea-paper", train_bessel=True)
    randomize_adapters(model, std=0.05)
    with torch.no_grad():
        trained = [v for k, v in model.adapter_state_dict().items() if k.startswith("base.")]
        assert trained
        for tensor in trained:
            tensor.add_(0.01)
    model.add_adapter("other", "elora", rank=2)
    model.set_adapter("other")
    randomize_adapters(model, std=0.05)
    expected = {}
    for name in ["default", "other"]:
        model.set_adapter(name)
        expected[name] = energy_forces(model, batch)
    cueq = to_cueq(model)  # converted while "other" is active
    assert cueq.active_adapter == "other" and list(cueq.peft_config) == ["default", "other"]
    for name in ["other", "default"]:
        cueq.set_adapter(name)
        energy, forces = energy_forces(cueq, batch)
        torch.testing.assert_close(energy, expected[name][0], atol=1e-10, rtol=0)
        torch.testing.assert_close(forces, expected[name][1], atol=1e-10, rtol=0)


def test_an_adapter_saved_from_the_cueq_model_loads_on_the_e3nn_model(mace_pair, converted, tmp_path):
    """In float64 the base fingerprint agrees across backends (mace's float32 basis map is snapped to float64)."""
    base, batch = mace_pair
    model, cueq = converted("mmea-paper", "ir_mul")
    cueq.save_pretrained(tmp_path)
    loaded = peft_equi.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)  # no BaseMismatchError
    for got, expected in zip(energy_forces(loaded, batch), energy_forces(model, batch)):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
