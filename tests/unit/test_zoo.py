"""Third-party models nobody here wrote (``tests/zoo``): every model x every equivariant adapter.

For each case of ``zoo/cases.py`` (table-driven, like the contract suite):

* discovery: the preset adapts layers, and the layers it must leave alone (``LAYER_REFUSALS``)
  and the weighted modules no backend adapts (``MODULES_LEFT_OUT``) are reported with their
  one-line reasons;
* identity at initialisation (outputs unchanged);
* every trainable tensor perturbed (adapters and BitFit's layer biases): the outputs change
  and stay equivariant under a random rotation and a random rotation times the inversion
  (float64);
* a few training steps (Adam, on the first output) change the trainable tensors;
* save/load round trip into a fresh copy of the base model: the same outputs;
* merged == adapted where every layer is mergeable, ``NotMergeableError`` otherwise.

Models whose package is missing are skipped with the reason.  fairchem-core is not in the
zoo (:func:`test_fairchem_is_left_out`).
"""

from __future__ import annotations

import contextlib
import importlib.util

import pytest
import torch
from zoo.cases import BY_NAME, CASES, LAYER_REFUSALS, MODULES_LEFT_OUT, AdapterCase
from zoo.common import ZooModel

import peft_equi
from peft_equi.testing import random_orthogonal, randomize_adapters

_BUILT: dict[str, tuple[torch.nn.Module, object, tuple, dict]] = {}


@contextlib.contextmanager
def _base(zoo: ZooModel):
    """The model (built once per module; a deep copy costs seconds), its inputs, outputs and tensors;
    the case must leave it as it was: unloaded, its tensors and mode restored here."""
    if importlib.util.find_spec(zoo.needs) is None:
        pytest.skip(f"{zoo.needs} is not installed (requirements/no-deps.txt installs it)")
    if zoo.name not in _BUILT:
        model, inputs = zoo.build()
        original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _BUILT[zoo.name] = model, inputs, tuple(t.detach() for t in zoo.outputs(model, inputs)), original
    model, inputs, outputs, original = _BUILT[zoo.name]
    mode = model.training
    try:
        yield model, inputs, outputs
    finally:
        if any(isinstance(m, peft_equi.AdaptedLayer) for m in model.modules()):
            del _BUILT[zoo.name]  # a failed case left adapters in it: build it again
        else:
            model.load_state_dict(original)
            model.train(mode)


def _close(a, b, atol):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


def _equivariance_error(zoo: ZooModel, model, inputs, out, generator) -> float:
    worst = 0.0
    for inversion in (False, True) if zoo.inversion else (False,):
        rotation = random_orthogonal(inversion=inversion, generator=generator)
        expected = zoo.rotate_outputs(out, rotation)
        got = zoo.outputs(model, zoo.rotate_inputs(inputs, rotation))
        worst = max(worst, *((g - e).abs().max().item() for g, e in zip(got, expected, strict=True)))
    return worst


def _perturb(model: peft_equi.PeftModel, std: float) -> None:
    """Every trainable tensor: the adapters' and the base tensors trained fully (BitFit's layer biases)."""
    randomize_adapters(model, std=std)
    adapter_params = {id(p) for _, adapter in model.adapters() for p in adapter.parameters()}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and id(p) not in adapter_params:
                p.add_(std * torch.randn_like(p))


def _params(zoo: ZooModel, case: AdapterCase) -> dict:
    return {**case.options, **zoo.options}


@pytest.mark.slow  # seconds per case: whole models, forces by autograd, training steps, saving, merging
@pytest.mark.parametrize(("zoo", "case"), [pytest.param(zoo, case, id=f"{zoo.name}-{case}") for zoo, case in CASES])
def test_zoo(zoo: ZooModel, case: AdapterCase, tmp_path):
    torch.manual_seed(0)
    with _base(zoo) as (base, inputs, expected):
        _check(zoo, case, base, inputs, expected, tmp_path)


def _check(zoo: ZooModel, case: AdapterCase, base, inputs, expected, path) -> None:
    generator = torch.Generator().manual_seed(0)
    rows = {r.path: r for r in peft_equi.inspect_model(base, case.adapter, **_params(zoo, case))}
    for layer, reason in LAYER_REFUSALS.get((zoo.name, str(case)), {}).items():
        assert rows[layer].adapter is None and reason in rows[layer].note, (layer, rows[layer].note)
    for module, reason in MODULES_LEFT_OUT.get(zoo.name, {}).items():
        assert rows[module].note.startswith("not adaptable: ") and reason in rows[module].note, rows[module].note
    assert all("\n" not in r.note for r in rows.values())

    model = peft_equi.get_peft_model(base, case.adapter, **_params(zoo, case))
    try:
        assert set(model.adapted_layers) == {r.path.replace("<root>", "") for r in rows.values() if r.adapter}
        _close(zoo.outputs(model, inputs), expected, atol=1e-12)  # identity at initialisation

        _perturb(model, std=0.05)
        perturbed = zoo.outputs(model, inputs)
        assert any(not torch.allclose(a, b) for a, b in zip(perturbed, expected)), "the perturbation changes nothing"
        assert _equivariance_error(zoo, model, inputs, perturbed, generator) < zoo.atol

        trainable = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        optimizer = torch.optim.Adam(trainable, lr=1e-3)
        for _ in range(2):
            optimizer.zero_grad()
            loss = zoo.outputs(model, inputs)[0].pow(2).sum()
            loss.backward()
            optimizer.step()
        assert torch.isfinite(loss) and any(not torch.equal(p, q) for p, q in zip(trainable, before))
        adapted = zoo.outputs(model, inputs)
        model.save_pretrained(path)
    finally:
        model.unload()  # the base model again, its tensors restored by _base
    base.load_state_dict(_BUILT[zoo.name][3])
    loaded = peft_equi.PeftModel.from_pretrained(base, path)
    try:
        _close(zoo.outputs(loaded, inputs), adapted, atol=1e-12)
        blockers = [layer.merge_blocker() for layer in loaded.adapted_layers.values()]
        if any(blockers):
            with pytest.raises(peft_equi.NotMergeableError):
                loaded.merge_and_unload()
            loaded.unload()
        else:
            _close(zoo.outputs(loaded.merge_and_unload(), inputs), adapted, atol=1e-10)
    finally:
        if not loaded.tuner_state.unloaded:
            loaded.unload()


@pytest.mark.slow
def test_a_refused_layer_says_how_to_declare_and_a_wrong_declaration_fails_at_run_time():
    """PaiNN mixes vector channels with a Dense on (atoms, 3, channels): FiLM there is refused with one
    line naming the layer; declaring it invariant anyway is caught by the run-time check."""
    zoo = BY_NAME["schnetpack.PaiNN"]
    with _base(zoo) as (base, inputs, _):
        _check_declaration(zoo, base, inputs)


def _check_declaration(zoo: ZooModel, base, inputs) -> None:
    path = "representation.mixing.0.mu_channel_mix"
    rule = peft_equi.Rule(adapter="film", target=path)
    with pytest.raises(peft_equi.UnsupportedLayerError) as error:
        peft_equi.get_peft_model(base, peft_equi.PeftConfig(rules=[rule]))
    message = str(error.value)
    assert "\n" not in message and path in message and f"invariant_inputs=['{path}']" in message
    model = peft_equi.get_peft_model(base, peft_equi.PeftConfig(rules=[rule], invariant_inputs=[path]))
    try:
        with pytest.raises(RuntimeError, match=rf"layer '{path}' \(film\).*component axis") as error:
            zoo.outputs(model, inputs)
        assert "\n" not in str(error.value)
    finally:
        model.unload()


def test_a_linear_subclass_with_its_own_forward_is_refused_not_rewritten():
    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    net = torch.nn.Sequential(Scaled(4, 4), torch.nn.SiLU())
    (row,) = peft_equi.inspect_model(net, "lora")
    assert row.note.startswith("not adaptable: ") and "overrides forward" in row.note
    with pytest.raises(peft_equi.RuleMatchError, match=r"not adaptable: '0': .*Scaled subclasses torch's Linear"):
        peft_equi.get_peft_model(net, "lora")


def test_fairchem_is_left_out():
    """fairchem-core 2.24 (the release for torch 2.13) imports wandb, torchtnt (pkg_resources: setuptools<81),
    monty, submitit and huggingface-hub when its models are imported, and pins lmdb<=1.7.3 against the
    tested lmdb 3.0.0; EquiformerV2 is no longer in it (fairchem 1.x pins torch 2.4).  Not in the tested set."""
    if importlib.util.find_spec("fairchem") is None:
        pytest.skip("fairchem-core is not in the tested set: its dependencies would change it (see the docstring)")
