"""The peft-style API on a network mixing o3.Linear, a tensor product, an FC net and nn.Linear."""

import copy

import pytest
import torch
from models import NET_IN, NET_OUT, MixedNet, net_inputs
from pydantic import ValidationError

import peft_equi
from peft_equi.testing import assert_equivariant, randomize_adapters

FIVE = ["bitfit", "elora", "film", "lora", "mmea"]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, {
        n: p.requires_grad for n, p in model.named_parameters()
    }


def test_list_adapters_and_presets():
    assert set(FIVE) <= set(peft_equi.list_adapters())
    assert peft_equi.list_adapters() == sorted(peft_equi.list_adapters())
    assert {"full", "readout-only", *FIVE} <= set(peft_equi.list_presets())
    assert {"e3nn.linear", "e3nn.tensor_product", "e3nn.fc", "torch.linear"} <= set(peft_equi.list_backends())


def test_discovery_finds_every_layer_kind():
    layers = {layer.path: layer for layer in peft_equi.discover(MixedNet())}
    assert list(layers) == ["embedding", "tp", "mlp.layer0", "mlp.layer1", "dense", "readout"]
    assert layers["tp"].backend.name == "e3nn.tensor_product"
    assert layers["mlp.layer0"].backend.name == "e3nn.fc"
    assert layers["dense"].backend.name == "torch.linear"


@pytest.mark.parametrize("name", FIVE)
def test_get_peft_model_by_name_on_mixed_network(name):
    net = MixedNet()
    x, attrs = net_inputs()
    expected = net(x, attrs)
    model = peft_equi.get_peft_model(net, name, invariant_inputs=["dense"])  # nn.Linear on the mlp's scalars
    assert torch.equal(model(x, attrs), expected)
    assert len(model.adapted_layers) >= 4
    randomize_adapters(model)
    assert_equivariant(model, [NET_IN, None], NET_OUT, args=[x, attrs])
    # gradients reach adapter parameters (and BitFit's layer biases) only
    model(x, attrs).pow(2).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or (name == "bitfit" and n.endswith("bias")) for n in trainable)
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n


def test_disable_adapter_gives_base_behaviour():
    net = MixedNet()
    x, attrs = net_inputs()
    expected = net(x, attrs)
    model = peft_equi.get_peft_model(net, "elora", rank=2)
    randomize_adapters(model)
    assert not torch.allclose(model(x, attrs), expected)
    with model.disable_adapter():
        assert torch.equal(model(x, attrs), expected)
    assert not torch.allclose(model(x, attrs), expected)


def test_print_trainable_parameters_breaks_down_by_adapter_and_layer(capsys):
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    model.print_trainable_parameters()
    out = capsys.readouterr().out
    total = model.num_trainable_parameters()
    assert f"trainable params: {total:,}" in out
    assert "embedding" in out and "mlp.layer0" in out and "lora" in out
    assert sum(count for _, _, count in model.trainable_parameter_breakdown()) == total


def test_merge_and_unload_returns_plain_base_model():
    net = MixedNet()
    x, attrs = net_inputs()
    model = peft_equi.get_peft_model(net, "lora", rank=3)
    randomize_adapters(model)
    adapted = model(x, attrs)
    plain = model.merge_and_unload()
    assert type(plain) is MixedNet
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in plain.modules())
    assert set(plain.state_dict()) == set(MixedNet().state_dict())
    assert all(p.requires_grad for p in plain.parameters())  # restored
    torch.testing.assert_close(plain(x, attrs), adapted, atol=1e-10, rtol=0)


def test_unload_restores_base_without_merging():
    net = MixedNet()
    x, attrs = net_inputs()
    expected = net(x, attrs)
    model = peft_equi.get_peft_model(net, "elora", rank=2)
    randomize_adapters(model)
    assert torch.equal(model.unload()(x, attrs), expected)


def test_merge_of_non_mergeable_adapter_names_it_and_changes_nothing():
    model = peft_equi.get_peft_model(MixedNet(), "mmea")
    randomize_adapters(model)
    x, attrs = net_inputs()
    before = model(x, attrs)
    with pytest.raises(peft_equi.NotMergeableError, match="mmea is not mergeable") as info:
        model.merge_and_unload()
    assert "embedding" in str(info.value)
    assert torch.equal(model(x, attrs), before)


def test_rules_targets_kinds_exclude_and_train_patterns():
    config = peft_equi.PeftConfig(
        rules=[
            peft_equi.Rule(adapter="mmea", target="re:(embedding|readout)", options={"rank": 4}),
            peft_equi.Rule(adapter="elora", kinds=["tensor_product"], options={"rank": 2}),
            peft_equi.Rule(adapter="lora", target="mlp.*", exclude="*layer1", options={"rank": 2}),
        ],
        exclude=["dense"],
        fully_trained=["dense.*"],
        fully_trained_buffers=["scale"],
    )
    net = MixedNet()
    model = peft_equi.get_peft_model(net, config)
    kinds = {path: layer.adapter.name for path, layer in model.adapted_layers.items()}
    assert kinds == {"embedding": "mmea", "tp": "elora", "mlp.layer0": "lora", "readout": "mmea"}
    assert isinstance(net.scale, torch.nn.Parameter) and net.scale.requires_grad
    assert net.dense.weight.requires_grad and not net.mlp.layer1.weight.requires_grad
    plain = model.unload()
    assert "scale" in dict(plain.named_buffers()) and not isinstance(plain.scale, torch.nn.Parameter)


def test_full_and_readout_only_presets():
    net = MixedNet()
    total = sum(p.numel() for p in net.parameters())
    assert peft_equi.get_peft_model(copy.deepcopy(net), "full").num_trainable_parameters() == total
    readout = peft_equi.get_peft_model(copy.deepcopy(net), "readout-only")
    assert readout.num_trainable_parameters() == net.readout.weight.numel()
    assert not readout.adapted_layers


def test_config_round_trips_json_and_yaml(tmp_path):
    config = peft_equi.PeftConfig(
        rules=[peft_equi.Rule(adapter="mmea", target=["interactions.*.linear"], options={"rank": 8, "gain": "exp"})],
        fully_trained_buffers=["*bessel_weights"],
    )
    assert peft_equi.PeftConfig.from_json(config.to_json()) == config
    assert peft_equi.PeftConfig.from_yaml(config.to_yaml()) == config
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    assert peft_equi.PeftConfig.from_file(tmp_path / "c.yaml") == config


# -- bad input: clear errors, the model untouched --


def _assert_unchanged(net, snapshot):
    state, grads = snapshot
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in net.modules())
    assert set(net.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda net: peft_equi.get_peft_model(net, "loraa"),
            peft_equi.UnknownNameError,
            "unknown preset or adapter 'loraa'; known: .*lora",
        ),
        (lambda net: peft_equi.get_peft_model(net, "mmea", rank=0), peft_equi.ConfigError, "adapter 'mmea': rank"),
        (lambda net: peft_equi.get_peft_model(net, "elora", rnak=4), peft_equi.ConfigError, "unknown option 'rnak'"),
        (lambda net: peft_equi.get_peft_model(net, "lora", target="nothing.*"), peft_equi.RuleMatchError, "nothing"),
        (lambda net: peft_equi.get_peft_model(net, "lora", fully_trained=["nope*"]), peft_equi.RuleMatchError, "nope"),
        (
            lambda net: peft_equi.get_peft_model(
                net,
                peft_equi.PeftConfig(
                    rules=[
                        peft_equi.Rule(adapter="lora", target="embedding"),
                        peft_equi.Rule(adapter="elora", target="x"),
                    ]
                ),
            ),
            peft_equi.RuleMatchError,
            "elora@x",
        ),
        (
            lambda net: peft_equi.get_peft_model(
                net, peft_equi.PeftConfig(rules=[peft_equi.Rule(adapter="bitfit", target="mlp.*")])
            ),
            peft_equi.UnsupportedLayerError,
            None,
        ),
    ],
)
def test_bad_input_is_named_and_leaves_the_model_alone(call, error, message):
    net = MixedNet()
    snapshot = _snapshot(net)
    if error is peft_equi.UnsupportedLayerError:
        # bitfit on the FC layers works (0e outputs): make it fail by a layer without 0e outputs
        from e3nn import o3

        net.add_module("vec", o3.Linear("2x1o", "2x1o"))
        snapshot = _snapshot(net)
        call = lambda net: peft_equi.get_peft_model(  # noqa: E731
            net, peft_equi.PeftConfig(rules=[peft_equi.Rule(adapter="bitfit", target="vec")])
        )
        message = "no 0e outputs|0e outputs"
    with pytest.raises(error, match=message):
        call(net)
    _assert_unchanged(net, snapshot)


@pytest.mark.parametrize(
    ("config", "error", "message"),
    [
        ({"rules": [{"adapter": "lora"}]}, TypeError, "must be a PeftConfig.*not dict"),
        (None, TypeError, "not NoneType"),
    ],
)
def test_a_config_of_the_wrong_type_is_named(config, error, message):
    net = MixedNet()
    snapshot = _snapshot(net)
    with pytest.raises(error, match=message):
        peft_equi.get_peft_model(net, config)
    _assert_unchanged(net, snapshot)


@pytest.mark.parametrize("model", ["x.model", None])
def test_a_model_that_is_not_a_module_is_named(model):
    with pytest.raises(TypeError, match=r"must be a torch\.nn\.Module, not"):
        peft_equi.get_peft_model(model, "lora")


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.yaml", None, "missing.yaml: .*No such file"),
        ("typo.yaml", "rulez: []\n", "typo.yaml: rulez: unknown option"),
        ("broken.yaml", "rules: [\n", "broken.yaml: "),
        ("broken.json", "{", "broken.json: "),
    ],
)
def test_config_file_problems_are_one_line_config_errors(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(peft_equi.ConfigError, match=message) as caught:
        peft_equi.PeftConfig.from_file(tmp_path / name)
    assert "\n" not in str(caught.value)


def test_invalid_rule_options_fail_at_config_validation():
    with pytest.raises(ValidationError, match="gain"):
        peft_equi.Rule(adapter="mmea", options={"gain": "sigmoid"})
    with pytest.raises(ValidationError, match="unknown adapter 'nope'"):
        peft_equi.Rule(adapter="nope")
    with pytest.raises(ValidationError, match="regular expression"):
        peft_equi.Rule(adapter="lora", target="re:(")
    with pytest.raises(ValidationError, match="neither"):
        peft_equi.Rule(adapter="mmea", options={"scalar_modulation": False, "higher_order_modulation": False})


def test_adapting_twice_is_refused():
    model = peft_equi.get_peft_model(MixedNet(), "lora")
    with pytest.raises(ValueError, match="already has peft_equi adapters"):
        peft_equi.get_peft_model(model.base_model, "elora")


def test_attributes_of_the_base_model_stay_reachable():
    net = MixedNet()
    net.r_max = 5.0
    model = peft_equi.get_peft_model(net, "lora")
    assert model.r_max == 5.0 and model.embedding is net.embedding


def test_merged_peft_model_refuses_further_calls():
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    plain = model.merge_and_unload()
    x, attrs = net_inputs()
    plain(x, attrs)
    with pytest.raises(RuntimeError, match="merged or unloaded"):
        model(x, attrs)


def test_inspect_counts_bitfit_layer_biases():
    rows = {r.path: r for r in peft_equi.inspect_model(MixedNet(), "bitfit", invariant_inputs=["dense"])}
    assert rows["embedding"].trainable == 6  # its own 6x0e bias, unfrozen
    assert rows["dense"].trainable == 5
