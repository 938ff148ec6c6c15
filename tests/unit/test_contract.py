"""The contract every (layer x adapter) pair keeps, run over the tables of ``contract_cases.py``.

For each layer row and adapter case (in the manner of Hugging Face peft's ``TEST_CASES`` +
``PeftCommonTester``; a new backend or adapter joins by a row there, not by a test here), one
test per property, so that a failure names it (``test_identity_at_init[o3.Linear-lora-float32]``):

* ``test_refuses_what_it_cannot_adapt``: an adapter with nothing to act on raises
  ``RuleMatchError`` saying so (the pairs of ``REFUSALS``), the layer untouched; the other
  tests run on the pairs it accepts;
* ``test_wraps_and_warns``: the backend (its ``AdaptedLayer`` subclass, with a ``forward`` of its own) wraps the layer;
  equivariant adapters attach without any warning, the non-equivariant ones warn;
* ``test_identity_at_init``: identity at initialisation, bit for bit (and with the adapters
  disabled), in float64 and float32;
* ``test_equivariant_after_randomising``: after randomising the adapters the output changes,
  and it is equivariant under random rotations and rotations times inversion, in float64
  (two of each) and float32 (one of each), each with its tolerance
  (``peft_equi.testing.DEFAULT_ATOL``); the non-equivariant adapter is not, wherever the
  layer has anything but ``0e`` features;
* ``test_state_dict_is_documented``: the tensors saved (by ``save_pretrained``) are the
  documented state dict (``adapters.<key>``, ``base.<name>`` for BitFit's layer biases),
  exactly the trainable parameters;
* ``test_round_trip``: loading them into the base layer as built gives the same outputs, bit
  for bit;
* ``test_torchscript_matches_eager``: the compiled layer (of the loaded model) gives the eager
  outputs, with the adapter on and off;
* ``test_merge_or_refuse``: merged (the loaded model) == unmerged, or ``NotMergeableError``
  naming the adapter.

Each layer is built once per dtype and each accepted pair adapted, randomised and saved once
per dtype (module-scoped caches: building MACE's contraction takes seconds); the tests read the
cached values and change nothing in them: what they change (loading, compiling, merging) is a
copy.  The tables themselves are checked first.  Random irreps: ``test_contract_random_irreps.py``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from contract_cases import (
    CASES,
    DEFAULTS,
    LAYERS,
    REFUSALS,
    VARIANTS,
    AdapterCase,
    Args,
    LayerCase,
    assert_refuses,
)
from safetensors import safe_open

import peft_equi
from peft_equi.families.mace.cueq import _compiled_modules
from peft_equi.testing import assert_equivariant, equivariance_error, randomize_adapters
from peft_equi.utils.copying import deepcopy_module
from peft_equi.utils.dtype import torch_default_dtype

ACCEPTED = [(layer, case) for layer, case in CASES if (layer.name, str(case)) not in REFUSALS]
REFUSED = [(layer, case) for layer, case in CASES if (layer.name, str(case)) in REFUSALS]
DTYPES = [torch.float64, torch.float32]
WITH_DTYPES = [(layer, case, dtype) for layer, case in ACCEPTED for dtype in DTYPES]
#: Rotations (and as many improper ones) per equivariance check: float32 checks the precision of a
#: path float64 checks with two, so one of each is enough there (and halves its cost).
TRIALS = {torch.float64: 2, torch.float32: 1}


def _rows(rows: list[tuple]):
    """Parametrise over ``(layer, case)`` or ``(layer, case, dtype)`` rows, ids like ``o3.Linear-lora-float32``."""
    names = ("layer", "case", "dtype")[: len(rows[0])]
    ids = ["-".join(str(item).removeprefix("torch.") for item in row) for row in rows]
    return pytest.mark.parametrize(names, rows, ids=ids)


accepted = _rows(ACCEPTED)


def _feature_irreps(layer: LayerCase) -> list[peft_equi.Irreps]:
    return [peft_equi.Irreps(i) for i in (*layer.irreps_in, layer.irreps_out) if i is not None]


def _invariant_only(layer: LayerCase) -> bool:
    """Only 0e features: every map is equivariant, even the non-equivariant adapter."""
    return all(block.ir.is_invariant for irreps in _feature_irreps(layer) for block in irreps)


def _equivariance_kwargs(layer: LayerCase, fn, args) -> tuple:
    fn, args = layer.equivariance_call(fn, args)
    return fn, layer.irreps_in, layer.irreps_out, {"args": args, "layout": layer.layout, "layout_in": layer.layouts_in}


def _check_equivariance(layer: LayerCase, fn, args) -> float:
    fn, irreps_in, irreps_out, kwargs = _equivariance_kwargs(layer, fn, args)
    return assert_equivariant(fn, irreps_in, irreps_out, **kwargs)


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy sharing the parameter-free compiled modules (copying recompiles them: seconds for cuet's)."""
    return deepcopy_module(module, _compiled_modules(module))


def _options(layer: LayerCase, case: AdapterCase) -> dict:
    return {**case.options, "invariant_inputs": list(layer.invariant_inputs)}


def _randomize(model: peft_equi.PeftModel) -> None:
    """Random adapters, and random values for the base tensors trained too (BitFit's layer biases)."""
    randomize_adapters(model, std=0.3)
    adapter_params = {id(p) for _, adapter in model.adapters() for p in adapter.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and id(p) not in adapter_params:
                p.add_(0.3 * torch.randn_like(p))


@dataclass(frozen=True)
class Adapted:
    """One accepted (layer, adapter case) in one dtype, as the property tests read it (they copy
    before changing anything): the outputs at initialisation and after randomising, adapter on and off."""

    base: torch.nn.Module  # the layer as built, never adapted
    args: Args
    base_out: torch.Tensor
    messages: list[str]  # the warnings get_peft_model gave
    init_out: torch.Tensor
    init_switched_off: torch.Tensor
    model: peft_equi.PeftModel  # its adapters (and BitFit's layer biases) randomised
    adapted: torch.Tensor
    switched_off: torch.Tensor  # the base layer with its trained tensors (BitFit's biases) as they are now
    directory: Path  # where model.save_pretrained wrote them


@pytest.fixture(scope="module")
def built():
    """``built(layer, dtype)``: the layer as built from seed 0 in ``dtype`` and its call arguments, once per
    module (copy before changing it)."""
    cache: dict[tuple[str, torch.dtype], tuple[torch.nn.Module, Args]] = {}

    def get(layer: LayerCase, dtype: torch.dtype = torch.float64) -> tuple[torch.nn.Module, Args]:
        if (layer.name, dtype) not in cache:
            torch.manual_seed(0)
            with torch_default_dtype(dtype):
                cache[layer.name, dtype] = layer.make()
        return cache[layer.name, dtype]

    return get


def _adapt(layer: LayerCase, case: AdapterCase, base: torch.nn.Module, args: Args, directory: Path) -> Adapted:
    """Adapt a copy of ``base``, read its outputs, randomise it, read them again and save it to ``directory``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)  # the adapters' initial values, whichever tests filled the caches before
        model = peft_equi.get_peft_model(_copy(base), case.adapter, **_options(layer, case))
    init_out = model(*args)
    with model.disable_adapter():
        init_switched_off = model(*args)
    torch.manual_seed(1)
    _randomize(model)
    with model.disable_adapter():
        switched_off = model(*args)
    return Adapted(
        base=base,
        args=args,
        base_out=base(*args),
        messages=[str(w.message) for w in caught],
        init_out=init_out,
        init_switched_off=init_switched_off,
        model=model,
        adapted=model(*args),
        switched_off=switched_off,
        directory=model.save_pretrained(directory),
    )


@pytest.fixture(scope="module")
def adapted(built, tmp_path_factory):
    """``adapted(layer, case, dtype)``: the :class:`Adapted` pair, made once per module."""
    cache: dict[tuple[str, str, torch.dtype], Adapted] = {}

    def get(layer: LayerCase, case: AdapterCase, dtype: torch.dtype = torch.float64) -> Adapted:
        key = layer.name, str(case), dtype
        if key not in cache:
            cache[key] = _adapt(layer, case, *built(layer, dtype), tmp_path_factory.mktemp("adapter"))
        return cache[key]

    return get


def _loaded(pair: Adapted) -> peft_equi.PeftModel:
    """The pair's saved adapter loaded into a copy of the base layer as built."""
    return peft_equi.PeftModel.from_pretrained(_copy(pair.base), pair.directory)


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
def test_layer_row_describes_its_layer(layer, built):
    """The row's irreps and layout are the layer's spec, and the base layer passes the check."""
    module, args = built(layer)
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


@_rows(REFUSED)
def test_refuses_what_it_cannot_adapt(layer, case, built):
    module, args = built(layer)
    reason = REFUSALS[layer.name, str(case)]
    match = rf"{re.escape(case.adapter)}\b.*{re.escape(reason)}"
    assert_refuses(_copy(module), args, case.adapter, _options(layer, case), match)


@accepted
def test_wraps_and_warns(layer, case, adapted):
    pair = adapted(layer, case)
    backend = peft_equi.BACKENDS.get(layer.backend)
    assert type(pair.model.base_model) is backend and backend.forward is not peft_equi.AdaptedLayer.forward
    if case.equivariant:
        assert not pair.messages, pair.messages
    else:
        assert any("NOT equivariant" in m for m in pair.messages), pair.messages


@_rows(WITH_DTYPES)
def test_identity_at_init(layer, case, dtype, adapted):
    pair = adapted(layer, case, dtype)
    assert pair.init_out.dtype == dtype
    assert torch.equal(pair.init_out, pair.base_out) is case.identity_at_init, "identity at initialisation, bit for bit"
    assert torch.equal(pair.init_switched_off, pair.base_out)


@_rows(WITH_DTYPES)
def test_equivariant_after_randomising(layer, case, dtype, adapted):
    pair = adapted(layer, case, dtype)
    assert not torch.allclose(pair.adapted, pair.base_out), "the randomised adapter changes nothing"
    fn, irreps_in, irreps_out, kwargs = _equivariance_kwargs(layer, pair.model, pair.args)
    kwargs["trials"] = TRIALS[dtype]
    if case.equivariant or _invariant_only(layer):
        assert_equivariant(fn, irreps_in, irreps_out, **kwargs)  # the tolerance of the outputs' dtype
    else:
        error = equivariance_error(fn, irreps_in, irreps_out, **kwargs)
        assert error > 1e-3, f"{case.adapter} is registered as not equivariant, but is (error {error:.1e})"


@accepted
def test_state_dict_is_documented(layer, case, adapted):
    """Saved keys: ``adapters.<adapter key>`` and ``base.<name>`` of trained layer biases; nothing else."""
    pair = adapted(layer, case)
    adapted_layer = pair.model.adapted_layers[""]
    state = pair.model.adapter_state_dict()
    expected = {f"adapters.{k}" for k in adapted_layer.adapter.state_dict()}
    if adapted_layer.adapter.trains_layer_bias:
        expected |= {f"base.{name}" for name in adapted_layer.bias_parameter_names(pair.base)}
    assert set(state) == expected
    assert sum(t.numel() for t in state.values()) == pair.model.num_trainable_parameters()
    with safe_open(pair.directory / "adapter_model.safetensors", framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in state)


@accepted
def test_round_trip(layer, case, adapted):
    pair = adapted(layer, case)
    loaded = _loaded(pair)
    assert type(loaded.base_model) is type(pair.model.base_model)
    assert torch.equal(loaded(*pair.args), pair.adapted)


@accepted
def test_torchscript_matches_eager(layer, case, adapted):
    pair = adapted(layer, case)
    scripted = torch.jit.script(_loaded(pair).base_model)
    torch.testing.assert_close(scripted(*pair.args), pair.adapted, atol=1e-10, rtol=0)
    scripted.adapter_enabled = False  # an attribute of the compiled module, read at call time
    torch.testing.assert_close(scripted(*pair.args), pair.switched_off, atol=1e-10, rtol=0)


@accepted
def test_merge_or_refuse(layer, case, adapted):
    pair = adapted(layer, case)
    loaded = _loaded(pair)
    if loaded.adapted_layers[""].merge_blocker() is not None:
        with pytest.raises(peft_equi.NotMergeableError, match=re.escape(case.adapter)):
            loaded.merge_and_unload()
        return
    merged = loaded.merge_and_unload()
    assert type(merged) is type(pair.base)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in merged.modules())
    torch.testing.assert_close(merged(*pair.args), pair.adapted, atol=1e-10, rtol=0)
