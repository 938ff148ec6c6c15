"""FiLM's own options: the bottleneck formula and count, bounded gains, operand selection, the SevenNet-0 budget."""

import copy
import math

import pytest
import torch
from models import LINEAR_IN, TP_IN1, TP_IN2, TP_OUT, layer_cases
from pydantic import ValidationError

import peft_equi
from peft_equi.adapters.film import FilmConfig
from peft_equi.testing import assert_equivariant, randomize_adapters


def _film(name, **options):
    layer, irreps_in, irreps_out = layer_cases()[name]
    if name == "nn.Linear":  # a bare nn.Linear: its input invariant by declaration
        options = {"invariant_inputs": [""], **options}
    model = peft_equi.get_peft_model(copy.deepcopy(layer), "film", **options)
    return layer, model, irreps_in, irreps_out


@pytest.mark.parametrize("gain", ["exp", "one_plus"])
def test_film_matches_its_formula(gain):
    layer, model, _, _ = _film("o3.Linear", rank=3, gain=gain, max_gain=1.7)
    adapter, spec = model.adapted_layers[""].adapter, model.adapted_layers[""].spec
    randomize_adapters(model, std=0.5)
    x = torch.randn(7, spec.irreps_in[0].dim)
    z = x[:, spec.invariant_input_index(0)]
    h = torch.nn.functional.silu(z @ adapter.head.weight.T + adapter.head.bias)
    u = h @ adapter.gamma.weight.T + adapter.gamma.bias
    phi = 1.7 ** torch.tanh(u) if gain == "exp" else 1 + 0.7 * torch.tanh(u)
    expected = layer(x) * phi[:, spec.component_channel_index()]
    expected[:, spec.scalar_component_index()] += h @ adapter.beta.weight.T + adapter.beta.bias
    torch.testing.assert_close(model(x), expected, atol=1e-12, rtol=0)


BOUNDS = [("exp", 2.0, 0.5), ("one_plus", 1.5, 0.5), ("exp", 1.1, 1 / 1.1)]


@pytest.mark.parametrize(("gain", "max_gain", "low"), BOUNDS)
@pytest.mark.parametrize("conditioning", ["input", "static"])
def test_film_gains_are_bounded(gain, max_gain, low, conditioning):
    """However large the adapter's parameters and the inputs, every gain lies in [low, max_gain]."""
    layer, model, _, _ = _film("o3.Linear", gain=gain, max_gain=max_gain, shift=False, conditioning=conditioning)
    randomize_adapters(model, std=100.0)
    x = 50 * torch.randn(64, peft_equi.Irreps(LINEAR_IN).dim)
    base = layer(x)
    nonzero = base.abs() > 1e-6
    ratio = (model(x) / base)[nonzero]
    eps = 1e-9
    assert ratio.min() >= low - eps and ratio.max() <= max_gain + eps
    assert ratio.max() > 1 + 0.9 * (max_gain - 1) and ratio.min() < 1 - 0.9 * (1 - low)  # saturated both ways


def test_film_parameter_counts():
    for name in ["o3.Linear", "FullyConnectedTensorProduct", "nn.Linear"]:
        spec = peft_equi.discover(layer_cases()[name][0])[0].spec
        m0, n, n0 = spec.num_invariant_in(), spec.num_channels_out, spec.num_scalar_out()
        for rank in [1, 8]:
            _, model, _, _ = _film(name, rank=rank)
            assert model.num_trainable_parameters() == (m0 + 1) * rank + (rank + 1) * (n + n0), (name, rank)
            _, model, _, _ = _film(name, rank=rank, shift=False)
            assert model.num_trainable_parameters() == (m0 + 1) * rank + (rank + 1) * n, (name, rank)
        _, model, _, _ = _film(name, conditioning="static")
        assert model.num_trainable_parameters() == n + n0
        _, model, _, _ = _film(name, conditioning="static", shift=False)
        assert model.num_trainable_parameters() == n


def test_film_conditions_on_selected_operands_only():
    """operands=[1]: the gains read the second operand's 0e channels (e.g. an element one-hot) only."""
    layer, model, irreps_in, irreps_out = _film("FullyConnectedTensorProduct", operands=[1], rank=4)
    spec = model.adapted_layers[""].spec
    m1 = len(spec.invariant_input_index(1))
    assert m1 == 3 and model.num_trainable_parameters() == (m1 + 1) * 4 + 5 * (spec.num_channels_out + 5)
    x1, x2 = torch.randn(5, peft_equi.Irreps(TP_IN1).dim), torch.randn(5, peft_equi.Irreps(TP_IN2).dim)
    assert torch.equal(model(x1, x2), layer(x1, x2))
    randomize_adapters(model, std=0.3)
    assert_equivariant(model, irreps_in, irreps_out, atol=1e-10)
    # the gains do not depend on operand 0: with x1 -> 2 x1 the output of this bilinear layer doubles
    torch.testing.assert_close(
        model(2 * x1, x2) - 2 * model(x1, x2),
        -model(torch.zeros_like(x1), x2),  # = -shift: the only part of the output not linear in x1
        atol=1e-12,
        rtol=0,
    )


def test_film_refuses_operands_without_invariants():
    from e3nn import o3

    tp = o3.FullyConnectedTensorProduct(TP_IN1, "1x1o", TP_OUT)
    rule = peft_equi.Rule(adapter="film", options={"operands": [1]})
    with pytest.raises(peft_equi.UnsupportedLayerError, match="have none"):
        peft_equi.get_peft_model(copy.deepcopy(tp), peft_equi.PeftConfig(rules=[rule]))
    rule = peft_equi.Rule(adapter="film", options={"operands": [2]})
    with pytest.raises(peft_equi.UnsupportedLayerError, match="do not exist"):
        peft_equi.get_peft_model(copy.deepcopy(tp), peft_equi.PeftConfig(rules=[rule]))
    assert peft_equi.get_peft_model(tp, "film", operands=[0]).num_trainable_parameters() > 0


def test_film_config_validation():
    assert FilmConfig().gain_amplitude == pytest.approx(math.log(2.0))
    assert FilmConfig(gain="one_plus", max_gain=1.25).gain_amplitude == pytest.approx(0.25)
    for bad in [
        {"max_gain": 1.0},
        {"gain": "one_plus", "max_gain": 2.5},
        {"rank": 0},
        {"conditioning": "static", "operands": [1]},
        {"operands": [1, 1]},
    ]:
        with pytest.raises(ValidationError):
            FilmConfig(**bad)


def test_film_stays_near_the_mmea_budget_on_sevennet0():
    """Default FiLM on SevenNet-0 trains about as many parameters as MMEA r16, 8 % of the old full-rank FiLM's.

    Neither shifts the radial networks (they must map zero to zero): MMEA, which would only
    shift them, leaves them alone; FiLM puts gains on them."""
    from peft_equi.families.base import load_potential

    model = load_potential("7net-0", dtype=torch.float32).model
    film = peft_equi.get_peft_model(copy.deepcopy(model), "film")
    mmea = peft_equi.get_peft_model(model, "mmea", rank=16)
    assert mmea.num_trainable_parameters() == 110_209 and film.num_trainable_parameters() == 125_762
    assert not any(".layer" in path for path in mmea.adapted_layers)  # the radial networks' e3nn.fc layers
    radial = [a for path, a in film.adapted_layers.items() if ".layer" in path]
    assert radial and all(a.adapter.beta is None for a in radial)
    assert film.num_trainable_parameters() < 0.1 * 1_563_842  # the full-rank FiLM it replaced


def test_film_conditioned_on_the_element_one_hot_in_mace():
    """operands=[1] adapts exactly the MACE layers that take the element one-hot: skip_tp and the contractions."""
    from mace_models import batch_of, build_mace, energy_forces, molecules

    from peft_equi.testing import energy_forces_equivariance_error

    mace, batch = build_mace("small"), batch_of(molecules(2))
    model = peft_equi.get_peft_model(copy.deepcopy(mace), "film", operands=[1], rank=4)
    assert sorted(model.adapted_layers) == [
        "interactions.0.skip_tp",
        "interactions.1.skip_tp",
        "products.0.symmetric_contractions",
        "products.1.symmetric_contractions",
    ]
    for layer in model.adapted_layers.values():
        assert layer.adapter.invariants.width == layer.spec.irreps_in[1].dim  # the one-hot, all 0e
    energy0, forces0 = energy_forces(mace, batch)
    energy, forces = energy_forces(model, batch)
    assert torch.equal(energy, energy0) and torch.equal(forces, forces0)
    randomize_adapters(model, std=0.05)
    assert (energy_forces(model, batch)[0] - energy0).abs().max() > 1e-6
    assert energy_forces_equivariance_error(lambda x: energy_forces(model, batch, x), batch["positions"]) < 1e-9
