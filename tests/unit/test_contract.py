"""The contract every (layer x adapter) pair keeps, run over the tables of ``contract_cases.py``.

For each layer row and adapter case (in the manner of Hugging Face peft's ``TEST_CASES`` +
``PeftCommonTester``; a new backend or adapter joins by a row there, not by a test here):

* refusal: an adapter with nothing to act on raises ``RuleMatchError`` saying so, model untouched;
* the backend's ``AdaptedLayer`` subclass wraps the layer; equivariant adapters attach
  without any warning, the non-equivariant ones warn;
* identity at initialisation, bit for bit (and with the adapters disabled);
* after randomising the adapters: the output changes, and it is equivariant under random
  rotations and rotations times inversion in float64 (the non-equivariant adapter is not,
  wherever the layer has anything but ``0e`` features);
* the saved tensors are the documented state dict (``adapters.<key>``, ``base.<name>`` for
  BitFit's layer biases), exactly the trainable parameters; loading them into the base
  layer as built gives the same outputs, bit for bit;
* TorchScript (on the loaded model): the compiled layer gives the eager outputs, with the
  adapter on and off;
* merged (the loaded model) == unmerged, or ``NotMergeableError`` naming the adapter.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from contract_cases import CASES, DEFAULTS, LAYERS, REFUSALS, VARIANTS, AdapterCase, LayerCase
from safetensors import safe_open

import peft_equi
from peft_equi.testing import assert_equivariant, equivariance_error, randomize_adapters


def _feature_irreps(layer: LayerCase) -> list[peft_equi.Irreps]:
    return [peft_equi.Irreps(i) for i in (*layer.irreps_in, layer.irreps_out) if i is not None]


def _scalar_only(layer: LayerCase) -> bool:
    """Only 0e features: every map is equivariant, even the non-equivariant adapter."""
    return all(block.ir.is_invariant for irreps in _feature_irreps(layer) for block in irreps)


def _check_equivariance(layer: LayerCase, fn, args) -> float:
    fn, args = layer.equivariance_call(fn, args)
    return assert_equivariant(
        fn, layer.irreps_in, layer.irreps_out, args=args, layout=layer.layout, layout_in=layer.layouts_in
    )


# -- the tables themselves --


def test_every_registered_backend_has_a_layer_row():
    assert {layer.backend for layer in LAYERS} == set(peft_equi.list_backends())


def test_adapter_cases_are_valid_and_refusals_occur():
    assert [case.adapter for case in DEFAULTS] == peft_equi.list_adapters()
    for case in VARIANTS:  # stale option names fail here, not as a refusal below
        peft_equi.ADAPTERS.get(case.adapter).config_class(**case.options)
    pairs = {(layer.name, str(case)) for layer, case in CASES}
    assert set(REFUSALS) <= pairs
    assert len(pairs) == len(CASES)  # ids are unique


@pytest.mark.parametrize("layer", LAYERS, ids=str)
def test_layer_row_describes_its_layer(layer):
    """The row's irreps and layout are the layer's spec, and the base layer passes the check."""
    module, args = layer.make()
    (found,) = peft_equi.discover(module)
    assert found.path == "" and found.backend.name == layer.backend
    spec = found.spec
    assert spec.irreps_out == peft_equi.Irreps(layer.irreps_out)
    assert spec.layout.value == layer.layout
    assert len(spec.irreps_in) == len(layer.irreps_in)
    for irreps, described in zip(layer.irreps_in, spec.irreps_in):
        assert irreps is None or described == peft_equi.Irreps(irreps)
    _check_equivariance(layer, module, args)


# -- the contract --


def _options(layer: LayerCase, case: AdapterCase) -> dict:
    return {**case.options, "invariant_inputs": list(layer.invariant_inputs)}


def _adapt(module: torch.nn.Module, layer: LayerCase, case: AdapterCase) -> peft_equi.PeftModel:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft_equi.get_peft_model(module, case.adapter, **_options(layer, case))
    messages = [str(w.message) for w in caught]
    if case.equivariant:
        assert not messages, messages
    else:
        assert any("NOT equivariant" in m for m in messages), messages
    return model


def _randomize(model: peft_equi.PeftModel) -> None:
    """Random adapters, and random values for the base tensors trained too (BitFit's layer biases)."""
    randomize_adapters(model, std=0.3)
    adapter_params = {id(p) for _, adapter in model.adapters() for p in adapter.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and id(p) not in adapter_params:
                p.add_(0.3 * torch.randn_like(p))


def _check_refusal(module, args, layer, case, reason):
    expected = module(*args)
    with pytest.raises(peft_equi.RuleMatchError, match=rf"{re.escape(case.adapter)}\b.*{re.escape(reason)}"):
        peft_equi.get_peft_model(module, case.adapter, **_options(layer, case))
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in module.modules())
    assert all(p.requires_grad for p in module.parameters())
    assert torch.equal(module(*args), expected)


def _check_state_dict(model, module, tmp_path):
    """Saved keys: ``adapters.<adapter key>`` and ``base.<name>`` of trained layer biases; nothing else."""
    adapted = model.adapted_layers[""]
    state = model.adapter_state_dict()
    expected = {f"adapters.{k}" for k in adapted.adapter.state_dict()}
    if adapted.adapter.trains_layer_bias:
        expected |= {f"base.{name}" for name in adapted.backend.bias_parameter_names(module)}
    assert set(state) == expected
    assert sum(t.numel() for t in state.values()) == model.num_trainable_parameters()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "adapter_model.safetensors", framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)


def _check_round_trip(model, original, args, adapted, tmp_path):
    """Load the saved adapter into the base layer as it was built (the layer unloaded, its
    original tensors put back: building the layer again costs seconds for cuet's contraction,
    and MACE's do not deepcopy); returns the loaded model."""
    wrapper = type(model.base_model)
    base = model.unload()
    base.load_state_dict(original)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in base.modules())
    loaded = peft_equi.PeftModel.from_pretrained(base, tmp_path)
    assert type(loaded.base_model) is wrapper
    assert torch.equal(loaded(*args), adapted)
    return loaded


def _check_torchscript(model, args, adapted, switched_off):
    scripted = torch.jit.script(model.base_model)
    torch.testing.assert_close(scripted(*args), adapted, atol=1e-10, rtol=0)
    scripted.adapter_enabled = False  # an attribute of the compiled module, read at call time
    torch.testing.assert_close(scripted(*args), switched_off, atol=1e-10, rtol=0)


def _check_merge(model, module_type, args, adapted, case):
    if model.adapted_layers[""].merge_blocker() is not None:
        with pytest.raises(peft_equi.NotMergeableError, match=re.escape(case.adapter)):
            model.merge_and_unload()
        return
    merged = model.merge_and_unload()
    assert type(merged) is module_type
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in merged.modules())
    torch.testing.assert_close(merged(*args), adapted, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("layer", "case"), CASES, ids=[f"{layer}-{case}" for layer, case in CASES])
def test_contract(layer, case, tmp_path):
    torch.manual_seed(0)
    module, args = layer.make()
    reason = REFUSALS.get((layer.name, str(case)))
    if reason is not None:
        _check_refusal(module, args, layer, case, reason)
        return
    original = {k: v.detach().clone() for k, v in module.state_dict().items()}  # to load the adapter into
    base_out = module(*args)
    model = _adapt(module, layer, case)
    assert type(model.base_model).__name__ == layer.wrapper

    out = model(*args)
    assert torch.equal(out, base_out) is case.identity_at_init, "identity at initialisation, bit for bit"
    with model.disable_adapter():
        assert torch.equal(model(*args), base_out)

    _randomize(model)
    adapted = model(*args)
    assert not torch.allclose(adapted, base_out), "the randomised adapter changes nothing"
    with model.disable_adapter():  # the base layer, with its trained tensors (BitFit's biases) as they are now
        switched_off = model(*args)
    if case.equivariant or _scalar_only(layer):
        _check_equivariance(layer, model, args)
    else:
        fn, flat = layer.equivariance_call(model, args)
        error = equivariance_error(
            fn, layer.irreps_in, layer.irreps_out, args=flat, layout=layer.layout, layout_in=layer.layouts_in
        )
        assert error > 1e-3, f"{case.adapter} is registered as not equivariant, but is (error {error:.1e})"

    _check_state_dict(model, module, tmp_path)
    loaded = _check_round_trip(model, original, args, adapted, tmp_path)
    _check_torchscript(loaded, args, adapted, switched_off)
    _check_merge(loaded, type(module), args, adapted, case)
