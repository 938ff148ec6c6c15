"""save_pretrained / from_pretrained: peft file format, bit-exact round trip, clear errors."""

import copy
import json

import pytest
import torch
from models import MixedNet, net_inputs
from safetensors import safe_open

import peft_equi
from peft_equi.testing import randomize_adapters


@pytest.mark.parametrize("name", ["bitfit", "elora", "film", "lora", "mmea"])
def test_round_trip_is_bit_exact(tmp_path, name):
    net = MixedNet()
    base = copy.deepcopy(net)
    x, attrs = net_inputs()
    model = peft_equi.get_peft_model(net, name)
    randomize_adapters(model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    expected = model(x, attrs)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = peft_equi.PeftModel.from_pretrained(base, tmp_path)
    assert torch.equal(loaded(x, attrs), expected)
    saved, reloaded = model.adapter_state_dict(), loaded.adapter_state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)


def test_only_adapter_weights_are_saved(tmp_path):
    model = peft_equi.get_peft_model(MixedNet(), "elora", rank=2)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "adapter_model.safetensors", framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("adapters.") for k in keys)
    assert sum(model.adapter_state_dict()[k].numel() for k in keys) == model.num_trainable_parameters()
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    assert meta["config"]["preset"] == "elora" and "tp" in meta["layers"]


def test_trained_base_tensors_are_saved_and_restored(tmp_path):
    config = peft_equi.PeftConfig(
        rules=[peft_equi.Rule(adapter="lora", target="embedding")],
        fully_trained=["readout.*"],
        fully_trained_buffers=["scale"],
    )
    net = MixedNet()
    fresh = copy.deepcopy(net)  # the same base weights
    model = peft_equi.get_peft_model(net, config)
    with torch.no_grad():
        model.base_model.scale.fill_(3.0)
        model.base_model.readout.weight.mul_(2.0)
    model.save_pretrained(tmp_path)
    loaded = peft_equi.PeftModel.from_pretrained(fresh, tmp_path, is_trainable=True)
    assert fresh.scale.item() == 3.0
    assert torch.equal(fresh.readout.weight, model.base_model.readout.weight)
    assert loaded.num_trainable_parameters() == model.num_trainable_parameters()


def test_loading_into_a_different_model_lists_the_differences(tmp_path):
    model = peft_equi.get_peft_model(MixedNet(), "elora", rank=2)
    model.save_pretrained(tmp_path)
    other = MixedNet()
    from e3nn import o3

    other.readout = o3.Linear("5x0e+3x1o+2x2e+1x0o", "2x0e+1x1o")  # different shapes
    snapshot = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(peft_equi.AdapterLoadError, match=r"shape mismatches: adapters\.readout"):
        peft_equi.PeftModel.from_pretrained(other, tmp_path)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in other.modules())
    assert all(torch.equal(v, snapshot[k]) for k, v in other.state_dict().items())
    del other.dense
    with pytest.raises(peft_equi.AdapterLoadError, match="layers adapted when saved but not now: dense"):
        peft_equi.PeftModel.from_pretrained(other, tmp_path)


def test_loading_from_a_directory_without_an_adapter(tmp_path):
    with pytest.raises(peft_equi.AdapterLoadError, match=r"adapter_config\.json not found"):
        peft_equi.PeftModel.from_pretrained(MixedNet(), tmp_path)


def test_save_overwrites_atomically(tmp_path):
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_unknown_format_or_broken_config_is_refused(tmp_path):
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta | {"format": 99}))
    with pytest.raises(peft_equi.AdapterLoadError, match="format 99"):
        peft_equi.PeftModel.from_pretrained(MixedNet(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(peft_equi.AdapterLoadError, match="not valid JSON"):
        peft_equi.PeftModel.from_pretrained(MixedNet(), tmp_path)
