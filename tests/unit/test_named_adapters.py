"""Several named adapters on one model, with Hugging Face peft's API (float64, seeded: see conftest).

``get_peft_model(..., adapter_name=)``, ``add_adapter``, ``set_adapter``, ``delete_adapter``,
``active_adapter``, ``peft_config``, ``save_pretrained`` / ``from_pretrained`` / ``load_adapter``
(``is_trainable``), ``disable_adapter``, typed adapter configs; TorchScript and the state-dict keys
of a model with one adapter.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from models import MixedNet, net_inputs

import peft_equi
from peft_equi import EloraConfig, LoraConfig, MmeaConfig, PeftConfig, PeftModel, Rule
from peft_equi.testing import randomize_adapters

# (first adapter, second adapter): each a (config, options) pair for get_peft_model / add_adapter
PAIRS = {
    "lora+elora(tp only)": (("lora", {"rank": 2}), (EloraConfig(rank=2), {"target": "tp"})),
    "mmea+lora(mlp)": ((MmeaConfig(rank=2), {}), ("lora", {"rank": 3, "target": "mlp.*"})),
    "bitfit+film": (("bitfit", {}), ("film", {})),
    "train readout+train scale": (
        (PeftConfig(rules=[Rule(adapter="lora", target="embedding")], fully_trained=["readout.*"]), {}),
        ("elora", {"rank": 2, "target": "tp", "fully_trained_buffers": ["scale"]}),
    ),
}


def _perturb(model: PeftModel) -> None:
    """Random values for the active adapter's trainable tensors (adapters and fully trained base tensors)."""
    randomize_adapters(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


def _two_adapters(pair: str) -> tuple[PeftModel, torch.nn.Module, dict[str, torch.Tensor], tuple]:
    """(model with adapters "default" and "other", each perturbed; a copy of the base; output of each
    adapter; the inputs)."""
    (config_a, options_a), (config_b, options_b) = PAIRS[pair]
    net = MixedNet()
    base = copy.deepcopy(net)
    x, attrs = net_inputs()
    model = peft_equi.get_peft_model(net, config_a, **options_a)
    _perturb(model)
    model.add_adapter("other", config_b, **options_b)
    model.set_adapter("other")
    _perturb(model)
    outputs = {"other": model(x, attrs)}
    model.set_adapter("default")
    outputs["default"] = model(x, attrs)
    return model, base, outputs, (x, attrs)


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("pair", PAIRS)
def test_two_adapters_differ_and_switching_back_reproduces_each(pair):
    model, base, outputs, (x, attrs) = _two_adapters(pair)
    assert list(model.peft_config) == ["default", "other"] and model.active_adapter == "default"
    assert all(isinstance(c, PeftConfig) for c in model.peft_config.values())
    assert not torch.allclose(outputs["default"], outputs["other"])
    assert not torch.allclose(outputs["default"], base(x, attrs))
    for name in ["other", "default", "other", "default"]:
        model.set_adapter(name)
        assert model.active_adapter == name and model.active_adapters == [name]
        assert torch.equal(model(x, attrs), outputs[name])
        with model.disable_adapter():  # whichever adapter is active
            without = model(x, attrs)
        assert torch.equal(model(x, attrs), outputs[name])
        if not model.tuner_state.trained_names[name]:  # (trained base tensors keep the active adapter's values)
            assert torch.equal(without, base(x, attrs))


@pytest.mark.parametrize("pair", PAIRS)
def test_only_the_active_adapter_is_trainable(pair):
    model, _, _, (x, attrs) = _two_adapters(pair)
    for name in ["other", "default"]:
        model.set_adapter(name)
        own = {f"base_model.{path}.adapter." for path, _ in model.adapters(name)}
        trained = set(model.tuner_state.trained_names[name])
        trainable = _trainable(model)
        assert trainable, name
        assert all(any(n.startswith(p) for p in own) or _base_name(n) in trained for n in trainable), name
        model.zero_grad()
        model(x, attrs).pow(2).sum().backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == trainable


def _base_name(name: str) -> str:
    return name.removeprefix("base_model.").replace(".base_layer.", ".")


def test_a_layer_without_the_active_adapter_is_its_base_layer():
    model, _, _, _ = _two_adapters("lora+elora(tp only)")
    model.set_adapter("other")  # adapts tp only
    inputs = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, args, path=path: inputs.__setitem__(path, args))
        for path, layer in model.tuner_state.layers.items()
    ]
    model(*net_inputs())
    for hook in hooks:
        hook.remove()
    assert list(model.adapted_layers) == ["tp"]
    assert set(inputs) == {"embedding", "tp", "mlp.layer0", "mlp.layer1", "dense", "readout"}
    for path, layer in model.tuner_state.layers.items():
        if path == "tp":
            assert not torch.equal(layer(*inputs[path]), layer.base_layer(*inputs[path]))
            continue
        assert layer.active_adapter is None and not layer.adapter_enabled
        assert isinstance(layer.other_adapters["default"], peft_equi.ADAPTERS.get("lora"))
        assert torch.equal(layer(*inputs[path]), layer.base_layer(*inputs[path])), path


def test_add_adapter_finds_wrapped_layers_at_their_paths_with_their_base_specs():
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    fresh = {layer.path: layer for layer in peft_equi.discover(MixedNet())}
    found = {layer.path: layer for layer in peft_equi.discover(model.base_model)}
    assert list(found) == list(fresh)
    for path, layer in found.items():
        assert layer.module is model.tuner_state.layers[path].base_layer
        assert layer.spec == fresh[path].spec and layer.backend is fresh[path].backend


def _expected_single_adapter_keys(base: torch.nn.Module, model: PeftModel) -> set[str]:
    """The keys of a model with one adapter, from the base model's keys and the adapters' own."""
    keys = set()
    for key in base.state_dict():
        path = next((p for p in model.adapted_layers if key.startswith(p + ".")), None)
        keys.add(key if path is None else f"{path}.base_layer.{key[len(path) + 1 :]}")
    for path, adapter in model.adapters():
        keys |= {f"{path}.adapter.{k}" for k in adapter.state_dict()}
    return {f"base_model.{k}" for k in keys}


@pytest.mark.parametrize("name", ["lora", "mmea", "bitfit"])
def test_single_adapter_state_dict_keys_are_unchanged_also_after_deleting_another(name):
    net = MixedNet()
    base = copy.deepcopy(net)
    model = peft_equi.get_peft_model(net, name)
    keys = set(model.state_dict())
    assert keys == _expected_single_adapter_keys(base, model)
    assert not any("other_adapters" in k for k in keys)
    model.add_adapter("extra", "elora", rank=2, target="tp", fully_trained_buffers=["scale"])
    two = set(model.state_dict())
    assert any(k.startswith("base_model.tp.other_adapters.extra.") for k in two)
    model.delete_adapter("extra")
    assert set(model.state_dict()) == keys
    assert "scale" in dict(model.base_model.named_buffers())  # a buffer again: no adapter trains it


@pytest.mark.parametrize("pair", PAIRS)
def test_delete_adapter(pair):
    model, base, outputs, (x, attrs) = _two_adapters(pair)
    paths = model.tuner_state.adapter_paths
    only_other = [p for p in paths["other"] if p not in paths["default"]]
    model.delete_adapter("default")  # the active one: the remaining one becomes active
    assert model.active_adapter == "other" and list(model.peft_config) == ["other"]
    assert torch.equal(model(x, attrs), outputs["other"])
    assert list(model.tuner_state.layers) == model.tuner_state.adapter_paths["other"]
    single = peft_equi.get_peft_model(copy.deepcopy(base), *PAIRS[pair][1][:1], **PAIRS[pair][1][1])
    assert set(model.state_dict()) == set(single.state_dict())
    assert set(only_other) <= set(model.adapted_layers)
    with pytest.raises(peft_equi.ConfigError, match="only adapter") as info:
        model.delete_adapter("other")
    assert "\n" not in str(info.value)


def _readout(model: PeftModel) -> torch.Tensor:
    layer = model.base_model.readout
    return getattr(layer, "base_layer", layer).weight  # wrapped once a "b" (bitfit) adapts it


def test_trained_base_tensors_are_kept_per_adapter_and_swapped():
    net = MixedNet()
    scale, readout = net.scale.clone(), net.readout.weight.detach().clone()
    model = peft_equi.get_peft_model(
        net, PeftConfig(rules=[Rule(adapter="lora", target="dense")], fully_trained=["readout.*"])
    )
    model.add_adapter("b", "bitfit", fully_trained=["readout.*"], fully_trained_buffers=["scale"])
    with torch.no_grad():
        _readout(model).fill_(1.0)  # "default"'s value
    model.set_adapter("b")
    assert torch.equal(_readout(model), readout)  # "b" starts from the base values
    with torch.no_grad():
        _readout(model).fill_(2.0)
        model.base_model.scale.fill_(3.0)
    model.set_adapter("default")
    assert torch.equal(_readout(model), torch.ones_like(readout))
    assert torch.equal(model.base_model.scale, scale)  # "default" does not train it: base value
    assert model.adapter_state_dict("b")["base.scale"].item() == 3.0
    model.set_adapter("b")
    assert _readout(model).eq(2.0).all() and model.base_model.scale.item() == 3.0
    plain = model.unload()  # keeps the active adapter's values; the buffer is a buffer again
    assert plain.readout.weight.eq(2.0).all() and dict(plain.named_buffers())["scale"].item() == 3.0


@pytest.mark.parametrize("pair", PAIRS)
def test_save_pretrained_and_load_two_named_adapters(tmp_path, pair):
    model, base, outputs, (x, attrs) = _two_adapters(pair)
    model.save_pretrained(tmp_path)
    files = ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [*files, "other"]  # peft's layout
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == files
    for name, directory in [("default", tmp_path), ("other", tmp_path / "other")]:
        meta = json.loads((directory / "adapter_config.json").read_text())
        assert meta["config"] == json.loads(model.peft_config[name].to_json())
        assert meta["format"] == 3 and meta["tensors_sha256"] and meta["config_sha256"]
        assert meta["base_fingerprint"]["tensors"]
        assert set(meta["layers"]) == set(model.tuner_state.adapter_paths[name])
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    assert loaded.active_adapter == "default" and list(loaded.peft_config) == ["default", "other"]
    for name in ["default", "other", "default"]:
        loaded.set_adapter(name)
        assert torch.equal(loaded(x, attrs), outputs[name])
        saved, reloaded = model.adapter_state_dict(name), loaded.adapter_state_dict(name)
        assert saved.keys() == reloaded.keys() and all(torch.equal(saved[k], reloaded[k]) for k in saved)
    alone = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "other", adapter_name="other")
    assert torch.equal(alone(x, attrs), outputs["other"])  # without "default": the same model


@pytest.mark.parametrize("selected", [["second"], "second"])  # a list of names, or one name
def test_selected_adapters_and_a_non_default_first_adapter(tmp_path, selected):
    model = peft_equi.get_peft_model(MixedNet(), "lora", adapter_name="first", rank=2)
    model.add_adapter("second", LoraConfig(rank=3))
    assert list(model.peft_config) == ["first", "second"] and model.active_adapter == "first"
    model.save_pretrained(tmp_path, selected_adapters=selected)
    assert [p.name for p in tmp_path.iterdir()] == ["second"]


def test_is_trainable(tmp_path):
    net = MixedNet()
    base = copy.deepcopy(net)
    model = peft_equi.get_peft_model(net, "bitfit")
    _perturb(model)
    model.add_adapter("lora", "lora", rank=2)
    directory = tmp_path
    model.save_pretrained(directory)
    frozen = PeftModel.from_pretrained(copy.deepcopy(base), directory)  # peft's default: inference
    assert not _trainable(frozen) and not frozen.training
    trainable = PeftModel.from_pretrained(copy.deepcopy(base), directory, is_trainable=True)
    assert trainable.training
    assert _trainable(trainable) == _trainable(model)
    frozen.load_adapter(f"{directory}/lora", "lora", is_trainable=True)
    frozen.load_adapter(f"{directory}/lora", "lora2")
    assert not _trainable(frozen)  # "lora" is not active yet
    frozen.set_adapter("lora")
    assert _trainable(frozen) and all(".adapter." in n for n in _trainable(frozen))
    frozen.set_adapter("lora2")
    assert not _trainable(frozen)
    frozen.set_adapter("default")
    assert not _trainable(frozen)


TYPED = [
    (MmeaConfig(rank=4), "mmea", {"rank": 4}, {}),
    (EloraConfig(rank=2, alpha=4.0), "elora", {"rank": 2, "alpha": 4.0}, {"target": "tp"}),
    (LoraConfig(), "lora", {}, {"fully_trained_buffers": ["scale"]}),
]


@pytest.mark.parametrize(("typed", "name", "adapter_options", "extra"), TYPED, ids=[t[1] for t in TYPED])
def test_typed_config_equals_the_string_preset(typed, name, adapter_options, extra):
    x, attrs = net_inputs()
    models = []
    for args, options in [((typed,), extra), ((name,), {**adapter_options, **extra})]:
        torch.manual_seed(1)
        models.append(peft_equi.get_peft_model(MixedNet(), *args, **options))
    by_type, by_name = models
    assert by_type.peft_config["default"] == by_name.peft_config["default"]
    assert by_type.peft_config["default"].to_json() == by_name.peft_config["default"].to_json()
    a, b = by_type.state_dict(), by_name.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(by_type(x, attrs), by_name(x, attrs))
    torch.manual_seed(2)
    by_type.add_adapter("x", typed, **extra)
    torch.manual_seed(2)
    by_name.add_adapter("x", name, **adapter_options, **extra)
    a, b = by_type.adapter_state_dict("x"), by_name.adapter_state_dict("x")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rule = Rule(adapter=name, options=typed)
    assert rule.options == adapter_options and rule.adapter_config == typed


@pytest.mark.parametrize("active", ["default", "other"])
def test_torchscript_compiles_the_active_adapter(active):
    model, _, outputs, (x, attrs) = _two_adapters("mmea+lora(mlp)")
    model.set_adapter(active)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x, attrs), outputs[active], atol=1e-10, rtol=0)
    torch.testing.assert_close(model(x, attrs), outputs[active], atol=0, rtol=0)


def test_merge_and_unload_merges_the_active_adapter():
    model, _, outputs, (x, attrs) = _two_adapters("lora+elora(tp only)")
    model.set_adapter("other")
    plain = model.merge_and_unload()
    assert type(plain) is MixedNet and not any(isinstance(m, peft_equi.AdaptedLayer) for m in plain.modules())
    torch.testing.assert_close(plain(x, attrs), outputs["other"], atol=1e-10, rtol=0)
    blocked, _, _, _ = _two_adapters("mmea+lora(mlp)")
    with pytest.raises(peft_equi.NotMergeableError, match="mmea is not mergeable"):
        blocked.merge_and_unload()
    blocked.set_adapter("other")  # lora on the MLP only: mergeable
    expected = blocked(x, attrs)
    torch.testing.assert_close(blocked.merge_and_unload()(x, attrs), expected, atol=1e-10, rtol=0)


def _save_other(model, tmp_path):
    model.save_pretrained(tmp_path)
    return model.load_adapter(tmp_path, "default")


ERRORS = [
    ("unknown set_adapter", lambda m, d: m.set_adapter("nope"), peft_equi.UnknownNameError, "'nope'; known: default"),
    ("unknown delete", lambda m, d: m.delete_adapter("nope"), peft_equi.UnknownNameError, "adapter name 'nope'"),
    ("unknown state", lambda m, d: m.adapter_state_dict("nope"), peft_equi.UnknownNameError, "nope"),
    ("unknown save", lambda m, d: m.save_pretrained(d, ["nope"]), peft_equi.UnknownNameError, "nope"),
    ("duplicate add", lambda m, d: m.add_adapter("default", "lora"), peft_equi.ConfigError, "already in use"),
    ("duplicate load", _save_other, peft_equi.ConfigError, "'default' is already in use"),
    ("dotted name", lambda m, d: m.add_adapter("a.b", "lora"), peft_equi.ConfigError, "no path separators, dots"),
    ("empty name", lambda m, d: peft_equi.get_peft_model(MixedNet(), "lora", ""), peft_equi.ConfigError, "''"),
    ("only adapter", lambda m, d: m.delete_adapter("default"), peft_equi.ConfigError, "only adapter"),
    ("bad option", lambda m, d: m.add_adapter("b", "lora", rank=0), peft_equi.ConfigError, "adapter 'lora': rank"),
    ("no layer", lambda m, d: m.add_adapter("b", "lora", target="x*"), peft_equi.RuleMatchError, "x\\*"),
    ("from_pretrained(PeftModel)", lambda m, d: PeftModel.from_pretrained(m, d), peft_equi.ConfigError, "load_adapter"),
]


@pytest.mark.parametrize(("call", "error", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_and_change_nothing(tmp_path, call, error, message):
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message) as info:
        call(model, tmp_path)
    assert "\n" not in str(info.value)
    assert list(model.peft_config) == ["default"] and model.active_adapter == "default"
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_to_moves_the_inactive_adapters_and_their_trained_tensors():
    model, _, outputs, (x, attrs) = _two_adapters("train readout+train scale")
    model.to(torch.float32)
    assert {v.dtype for v in model.adapter_state_dict("other").values()} == {torch.float32}  # inactive
    for name in ["other", "default"]:
        model.set_adapter(name)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        assert {v.dtype for v in model.adapter_state_dict(name).values()} == {torch.float32}
        torch.testing.assert_close(model(x.float(), attrs.float()), outputs[name].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pair", PAIRS)
def test_adapter_layer_names_hold_every_adapter_tensor(pair):
    """``AdaptedLayer.adapter_layer_names`` (peft's declaration) is complete: a layer's tensors are its base
    layer's or under those attributes, and ``adapter_parameters`` gives every named adapter's parameters."""
    model, _, _, _ = _two_adapters(pair)
    for path, layer in model.tuner_state.layers.items():
        prefixes = ("base_layer.", *(f"{attr}." for attr in layer.adapter_layer_names))
        assert [k for k in layer.state_dict() if not k.startswith(prefixes)] == [], path
        assert [n for n, _ in layer.named_parameters() if not n.startswith(prefixes)] == [], path
        held = {id(p) for name in layer.adapter_names() for p in layer.named_adapter(name).parameters()}
        assert {id(p) for p in layer.adapter_parameters()} == held, path


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_keeps_its_adapters_and_state(how, tmp_path):
    """``copy.deepcopy`` and ``torch.save``/``torch.load`` of a PeftModel: its TunerState refers to the copy's own
    layers and tensors, so switching adapters in the copy reproduces each and leaves the original alone."""
    model, _, outputs, (x, attrs) = _two_adapters("train readout+train scale")
    if how == "deepcopy":
        copied = copy.deepcopy(model)
    else:
        torch.save(model, tmp_path / "model.pt")
        copied = torch.load(tmp_path / "model.pt", weights_only=False)
    state = copied.tuner_state
    assert state is not model.tuner_state
    assert all(layer is copied.base_model.get_submodule(path) for path, layer in state.layers.items())
    for name in ["other", "default"]:
        copied.set_adapter(name)
        assert torch.equal(copied(x, attrs), outputs[name])
        assert model.active_adapter == "default"
        assert torch.equal(model(x, attrs), outputs["default"])
