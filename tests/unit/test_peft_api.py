"""Hugging Face peft's API where peft-equi claims it: a peft usage script runs with only its import line changed."""

from __future__ import annotations

import copy

import pytest
import torch
from models import MixedNet, net_inputs

import peft_equi
from peft_equi.testing import randomize_adapters

#: A short script in peft's style (``from peft import ...``), as its documentation writes one.
PEFT_SCRIPT = """
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

config = LoraConfig(r=4, lora_alpha=8, target_modules=["embedding", "readout"])
model = get_peft_model(base_model, config)
model.print_trainable_parameters()

optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
model.train()
for step in range(5):
    loss = model(*inputs).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())

model.save_pretrained(output_dir)
loaded = PeftModel.from_pretrained(fresh_base_model, output_dir)
state = get_peft_model_state_dict(model)
set_peft_model_state_dict(loaded, state)
merged = loaded.merge_and_unload()
"""


def test_a_peft_usage_script_runs_with_only_its_import_line_changed(tmp_path, capsys):
    script = PEFT_SCRIPT.replace("from peft import", "from peft_equi import")
    assert sum(a != b for a, b in zip(script.splitlines(), PEFT_SCRIPT.splitlines(), strict=True)) == 1
    torch.manual_seed(0)
    base = MixedNet().double()
    x, attrs = net_inputs()
    x, attrs = x.double(), attrs.double()
    fresh = copy.deepcopy(base)
    expected_base = base(x, attrs)
    names: dict = {"torch": torch, "base_model": base, "fresh_base_model": fresh, "inputs": (x, attrs)}
    names |= {"losses": [], "output_dir": tmp_path / "adapter"}
    exec(compile(script, "peft_script", "exec"), names)

    model, merged, state = names["model"], names["merged"], names["state"]
    assert "trainable params:" in capsys.readouterr().out
    assert names["losses"][-1] < names["losses"][0]  # it trained
    assert set(model.adapted_layers) == {"embedding", "readout"}
    assert state and all(key.startswith("adapters.") and ".lora_" in key for key in state)
    model.eval()
    adapted = model(x, attrs)
    assert not torch.allclose(adapted, expected_base)
    torch.testing.assert_close(merged(x, attrs), adapted, atol=1e-12, rtol=0)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in merged.modules())


def test_peft_field_names_are_the_same_options():
    ours = peft_equi.LoraConfig(rank=4, alpha=8.0)
    theirs = peft_equi.LoraConfig(r=4, lora_alpha=8.0)
    assert ours == theirs and (theirs.r, theirs.lora_alpha) == (4, 8.0)
    assert peft_equi.LoraConfig(r=2).lora_alpha == 2  # peft's default scaling 1 here: alpha = rank


def test_target_modules_is_for_get_peft_model_not_a_rule():
    with pytest.raises(ValueError, match="a Rule takes target"):
        peft_equi.Rule(adapter="lora", options={"target_modules": ["tp"]})
    with pytest.raises(peft_equi.ConfigError, match="not both"):
        peft_equi.get_peft_model(MixedNet(), peft_equi.LoraConfig(target_modules=["tp"]), target=["tp"])


@pytest.mark.parametrize(("target_modules", "adapted"), [(["tp"], {"tp"}), (".*(tp|readout)", {"tp", "readout"})])
def test_target_modules_as_peft_reads_them(target_modules, adapted):
    model = peft_equi.get_peft_model(MixedNet(), "lora", r=2, target_modules=target_modules)
    assert set(model.adapted_layers) == adapted


def test_get_base_model_is_the_users_model():
    base = MixedNet()
    model = peft_equi.get_peft_model(base, "lora")
    assert model.get_base_model() is base is model.base_model


def _adapted(name: str = "lora") -> tuple[peft_equi.PeftModel, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    model = peft_equi.get_peft_model(MixedNet().double(), name)
    randomize_adapters(model, std=0.1)
    x, attrs = net_inputs()
    return model, (x.double(), attrs.double())


def test_merge_adapter_keeps_the_wrappers_and_unmerge_adapter_restores_exactly():
    model, inputs = _adapted()
    weights = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    adapted = model(*inputs)
    model.merge_adapter()
    assert model.merged and model.adapted_layers
    torch.testing.assert_close(model(*inputs), adapted, atol=1e-12, rtol=0)
    with pytest.raises(RuntimeError, match="unmerge_adapter"):
        model.set_adapter("default")
    model.unmerge_adapter()
    assert not model.merged
    after = model.get_base_model().state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())  # exactly, not by subtraction
    torch.testing.assert_close(model(*inputs), adapted, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="no adapter is merged"):
        model.unmerge_adapter()


@pytest.mark.parametrize("how", ["merge_adapter", "merge_and_unload"])
def test_safe_merge_refuses_non_finite_weights_and_changes_nothing(how):
    model, _ = _adapted()
    with torch.no_grad():
        next(next(model.adapters())[1].parameters()).fill_(float("inf"))
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items()}
    with pytest.raises(peft_equi.NotMergeableError, match="not finite"):
        getattr(model, how)(safe_merge=True)
    after = model.get_base_model().state_dict()
    assert not model.merged and all(torch.equal(after[k], v) for k, v in before.items())


def test_state_dict_functions_round_trip_and_read_a_full_state_dict():
    model, inputs = _adapted()
    other, _ = _adapted()
    peft_equi.get_peft_model_state_dict(other)["adapters.readout.lora_B.0"].zero_()
    state = {k: v.clone() for k, v in peft_equi.get_peft_model_state_dict(model).items()}
    peft_equi.set_peft_model_state_dict(other, state)
    torch.testing.assert_close(other(*inputs), model(*inputs), atol=0, rtol=0)
    from_full = peft_equi.get_peft_model_state_dict(model, model.state_dict())
    assert from_full.keys() == state.keys() and all(torch.equal(from_full[k], v) for k, v in state.items())
    with pytest.raises(peft_equi.AdapterLoadError, match="missing keys"):
        peft_equi.set_peft_model_state_dict(other, dict(list(state.items())[1:]))


def test_inject_adapter_in_model_adapts_the_model_in_place():
    base = MixedNet()
    returned = peft_equi.inject_adapter_in_model(peft_equi.LoraConfig(r=2), base)
    assert returned is base and isinstance(base.tp, peft_equi.AdaptedLayer)
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    merged = peft_equi.merge_adapters(base)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in merged.modules())
