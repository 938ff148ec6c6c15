"""Dense layers whose features their module does not state: proofs, declarations, the run-time
refusal, what ``assert_equivariant`` checks on them, and the wrapped module's attributes."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

import peft_equi
from peft_equi.core.invariance import breaks_parity
from peft_equi.testing import assert_equivariant, randomize_adapters


@pytest.mark.parametrize(
    ("fn", "breaks"),
    [
        (torch.nn.functional.silu, True),
        (torch.sigmoid, True),
        (torch.relu, True),
        (torch.tanh, False),
        (torch.abs, False),
    ],
)
def test_parity_is_measured(fn, breaks):
    assert breaks_parity(fn) is breaks


def _notes(model, adapter="film", **options) -> dict[str, str]:
    return {r.path: r.note for r in peft_equi.inspect_model(model, adapter, **options)}


def test_a_linear_next_to_a_parity_breaking_activation_is_proven_and_an_odd_one_proves_nothing():
    proven = _notes(
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.SiLU(), torch.nn.Linear(4, 2))
    )
    assert "input 0e: proven: its output goes into SiLU" in proven["0"]
    assert "input 0e: proven: its input comes out of SiLU" in proven["3"]
    odd = _notes(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)))
    assert all("declare it: invariant_inputs=" in note for note in odd.values())


def test_declared_layers_take_every_adapter_and_a_pattern_naming_no_dense_layer_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model = peft_equi.get_peft_model(net, "mmea", invariant_inputs=["0", "2"])
    assert list(model.adapted_layers) == ["0", "2"]
    assert _notes(torch.nn.Linear(2, 2), invariant_inputs=[""])["<root>"].startswith("input 0e: declared")
    with pytest.raises(peft_equi.RuleMatchError, match="invariant_inputs pattern 'tp' matches no layer"):
        peft_equi.get_peft_model(o3.Linear("2x0e", "2x0e"), "film", invariant_inputs=["tp"])


def test_weight_space_adapters_act_on_a_dense_layer_whatever_its_features():
    for name, options in [("lora", {}), ("elora", {}), ("film", {"conditioning": "static", "shift": False})]:
        model = peft_equi.get_peft_model(torch.nn.Linear(5, 4, bias=False), name, **options)
        randomize_adapters(model)
        assert_equivariant(model)  # fed (batch, 2l+1, channels) features of 0e, 0o, 1o, 1e and 2e


def test_assert_equivariant_checks_the_layer_not_its_spec(monkeypatch):
    model = peft_equi.get_peft_model(torch.nn.Linear(5, 4), "film", invariant_inputs=[""])
    randomize_adapters(model)
    assert_equivariant(model)  # 0e features, and vectors refused at run time
    layer = model.adapted_layers[""]
    layer.guard_input = False  # as if nothing refused vectors: FiLM would read their components
    with pytest.raises(AssertionError, match="took \\(batch, 3, channels\\) vectors without refusing them"):
        assert_equivariant(model)
    from nequip.nn.mlp import ScalarLinearLayer  # torch.mm: (batch, channels) only

    with pytest.raises(ValueError, match="does not take features with a component axis"):
        assert_equivariant(peft_equi.get_peft_model(ScalarLinearLayer(3, 3), "lora"))


def test_wrapped_layers_expose_the_attributes_models_read_and_compile():
    class Conv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sc = o3.FullyConnectedTensorProduct("2x0e+1x1o", "1x0e", "2x0e+1x1o+1x2e")

        def forward(self, x, attr):
            return self.sc(x, attr) * self.sc.output_mask  # as e3nn's example networks do

    conv = Conv()
    x, attr = torch.randn(4, 5), torch.ones(4, 1)
    model = peft_equi.get_peft_model(conv, "film")
    randomize_adapters(model)
    wrapped = model.base_model.sc
    for name in ("output_mask", "irreps_in1", "irreps_out", "weight_numel", "instructions"):
        assert getattr(wrapped, name) is getattr(wrapped.base_layer, name)
    torch.testing.assert_close(torch.jit.script(model)(x, attr), model(x, attr), atol=1e-12, rtol=0)
    model.double()
    assert wrapped.output_mask is wrapped.base_layer.output_mask  # the alias follows .to()
