"""The paper presets start from the reference code's initialisation; mmea-paper's options and the ablations.

Reference inits (ELoRA and MMEA code, mace 0.3.5): low-rank ``A = randn`` (std 1) and ``B = 0``
on o3.Linear, radial-MLP (FC) layers and internal-weight tensor products; contraction
``weights_max``: ``A = randn(E, P, r) / P``, ``B = 0``; MMEA gate: PyTorch's default weight,
bias 0; gain map 0; shift map bias 0, weight PyTorch's default (rMD17) or
N(0, 1e-3^2) (3BPA).
"""

from __future__ import annotations

import copy
import math
import sys
import warnings

import pydantic
import pytest
import torch
from mace_models import energy_forces
from paths import ROOT

import peft_equi
from peft_equi.adapters.elora import EloraAdapter, EloraConfig
from peft_equi.core.presets import resolve_config
from peft_equi.families.mace.presets import mmea_paper

sys.path.insert(0, str(ROOT / "benchmarks"))
import comparison


def _adapters(model, kind: str) -> dict[str, torch.nn.Module]:
    """Adapters by layer path whose layer is of ``kind`` (``radial``, ``contraction``, ``skip_tp``, ``linear``)."""
    found = {}
    for path, layer in model.adapted_layers.items():
        if "conv_tp_weights" in path:
            key = "radial"
        elif layer.spec.kind.value == "contraction":
            key = "contraction"
        elif path.endswith("skip_tp"):
            key = "skip_tp"
        else:
            key = "linear"
        if key == kind:
            found[path] = layer.adapter
    return found


def _std(tensors) -> float:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).std().item()


@pytest.mark.parametrize("preset", ["mmea-paper", "elora-paper"])
def test_paper_presets_low_rank_factors_start_as_the_reference(small_mace, preset):
    torch.manual_seed(0)
    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), preset)
    radial = _adapters(model, "radial")
    assert radial and {a.name for a in radial.values()} == {"lora"}
    assert 0.9 < _std(p for a in radial.values() for p in a.lora_A.values()) < 1.1  # randn, not 1e-3
    contractions = _adapters(model, "contraction")
    assert contractions
    scaled, coupling_paths = [], set()
    for adapter in contractions.values():
        for (index,), a in zip(adapter.groups, adapter.elora_A):  # one per weights_max
            path = adapter.spec.paths[index]
            assert path.name.endswith("weights_max") and a.shape == (path.fan_in, 16)
            coupling_paths.add(path.shape[1])
            scaled.append(a * path.shape[1])  # A = randn(E, P, r) / P
    assert len(coupling_paths) > 1 and 0.85 < _std(scaled) < 1.15
    others = list(_adapters(model, "skip_tp").values())
    if preset == "elora-paper":
        others += list(_adapters(model, "linear").values())
    assert 0.9 < _std(a for adapter in others for a in adapter.elora_A) < 1.1
    for adapter in model.adapted_layers.values():
        for name, p in adapter.adapter.named_parameters():
            if "_B" in name or "elora_full" in name:
                assert not p.detach().any(), name  # B = 0 (and the full lower-order updates)


def test_contraction_a_is_drawn_as_randn_over_coupling_paths(small_mace):
    """Same draw as the reference ``randn(E, P, r) / P`` for one contraction (up to the last bit of 1/P)."""
    layer = next(x for x in peft_equi.discover(small_mace) if x.spec.kind.value == "contraction")
    path = layer.spec.paths[0]
    n_elements, n_paths, _ = path.shape
    config = EloraConfig(rank=4, paths=[path.name], init_per_coupling_path=True)
    torch.manual_seed(1)
    adapter = EloraAdapter(layer.spec, config)
    torch.manual_seed(1)
    reference = torch.randn(n_elements, n_paths, 4) / n_paths
    torch.testing.assert_close(adapter.elora_A[0], reference.reshape(-1, 4), atol=1e-15, rtol=1e-15)
    torch.manual_seed(1)
    default = EloraAdapter(layer.spec, EloraConfig(rank=4, paths=[path.name]))
    torch.testing.assert_close(default.elora_A[0], reference.reshape(-1, 4) * n_paths)  # off: no division


@pytest.mark.parametrize("shift_init_std", [None, 1e-3])
def test_mmea_paper_gates_start_as_the_reference(small_mace, shift_init_std):
    options = {} if shift_init_std is None else {"shift_init_std": shift_init_std}
    torch.manual_seed(0)
    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), "mmea-paper", **options)
    gates = _adapters(model, "linear")
    assert gates and {a.name for a in gates.values()} == {"mmea"}
    shift_weights = []
    for path, adapter in gates.items():
        (head,) = adapter.heads
        bound = 1 / math.sqrt(head.in_features)  # PyTorch's default nn.Linear init: U(-bound, bound)
        assert head.weight.abs().max() <= bound and head.weight.std() > bound / 3, path
        assert not head.bias.any(), path
        if adapter.scale is not None:
            assert not adapter.scale.weight.any() and not adapter.scale.bias.any(), path
        assert adapter.shift is not None and not adapter.shift.bias.any(), path
        shift_weights.append(adapter.shift.weight)
    rank = 16
    if shift_init_std is None:  # U(-1/sqrt(r), 1/sqrt(r)): std 1/sqrt(3 r)
        assert max(w.abs().max().item() for w in shift_weights) <= 1 / math.sqrt(rank)
        assert 0.9 < _std(shift_weights) * math.sqrt(3 * rank) < 1.1
    else:
        assert 0.9 < _std(shift_weights) / shift_init_std < 1.1


def test_mmea_paper_differs_from_the_base_model_only_through_the_shift_weights(small_mace, batch):
    """The reference init is not the identity at step 0 (the papers' behaviour); ``init="identity"`` is."""
    energy0, forces0 = energy_forces(small_mace, batch)
    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), "mmea-paper")
    energy, _ = energy_forces(model, batch)
    assert (energy - energy0).abs().max() > 1e-6
    with torch.no_grad():
        for adapter in _adapters(model, "linear").values():
            adapter.shift.weight.zero_()
    energy, forces = energy_forces(model, batch)
    torch.testing.assert_close(energy, energy0, atol=1e-12, rtol=0)
    torch.testing.assert_close(forces, forces0, atol=1e-12, rtol=0)
    identity = peft_equi.get_peft_model(copy.deepcopy(small_mace), "mmea-paper", init="identity")
    torch.testing.assert_close(energy_forces(identity, batch)[0], energy0, atol=1e-12, rtol=0)


def test_mmea_adapter_default_stays_the_identity_and_options_are_checked():
    layer = torch.nn.Linear(6, 4)
    model = peft_equi.get_peft_model(copy.deepcopy(layer), "mmea", rank=3, invariant_inputs=[""])
    adapter = model.adapted_layers[""].adapter
    assert not adapter.heads[0].bias.any() and not adapter.shift.weight.any() and not adapter.shift.bias.any()
    with pytest.raises(peft_equi.ConfigError, match="shift_init_std"):
        peft_equi.get_peft_model(copy.deepcopy(layer), "mmea", shift_init_std=1e-3)  # init='identity'
    with pytest.raises(pydantic.ValidationError, match="activaton"):
        mmea_paper(activaton="identity")  # a typo is refused when the preset is resolved
    with pytest.raises(pydantic.ValidationError, match="gain_sharing"):
        mmea_paper(gain_sharing="layer")
    with pytest.raises(ValueError, match="do not apply"):
        mmea_paper(linear_adapter="conventional", heads="separate")


def _mmea_count(module, rank: int, switch: dict) -> int:
    """Trainable parameters of one MMEA (or conventional) adapter on an e3nn o3.Linear, from its irreps."""
    m0 = sum(mul for mul, ir in module.irreps_in if ir.l == 0 and ir.p == 1)
    n0 = sum(mul for mul, ir in module.irreps_out if ir.l == 0 and ir.p == 1)
    higher = module.irreps_out.num_irreps - n0
    if switch.get("linear_adapter") == "conventional":
        return rank * (module.irreps_in.dim + module.irreps_out.dim)
    if switch.get("gain_sharing") == "irrep":
        higher = len({ir for mul, ir in module.irreps_out if not (ir.l == 0 and ir.p == 1)})
    if switch.get("scalar_modulation") is False:
        n0 = 0
    if switch.get("higher_order_modulation") is False:
        higher = 0
    if n0 + higher == 0:
        return 0  # nothing to modulate: the layer is left alone
    heads = 2 if switch.get("heads") == "separate" and n0 and higher else 1
    return heads * (m0 + 1) * rank + (rank + 1) * (n0 + higher)


def test_ablations_are_the_paper_recipe_with_one_switch_changed(small_mace):
    """Every ablation row of the benchmark is ``mmea-paper`` with exactly one option changed; counts follow."""
    warnings.simplefilter("ignore", UserWarning)  # the conventional adapter warns that it is not equivariant
    paper = mmea_paper()
    paper_count = peft_equi.get_peft_model(copy.deepcopy(small_mace), paper).num_trainable_parameters()
    linears = [m for m in small_mace.modules() if type(m).__name__ == "Linear" and hasattr(m, "instructions")]
    hybrid = paper_count - sum(_mmea_count(m, 16, {}) for m in linears)
    ablations = comparison.select_methods(None, True, is_mace=True)
    assert next(iter(ablations)) == "mmea-paper"
    changed = set()
    for label, (name, options) in ablations.items():
        if name != "mmea-paper":
            assert name == "readout-only", label  # the one baseline row
            continue
        switch = {k: v for k, v in options.items() if k != "rank"}
        assert options["rank"] == 16 and len(switch) == (label != "mmea-paper"), label
        config = resolve_config(name, **options)
        assert config.rules[1:] == paper.rules[1:], label
        assert config.fully_trained_buffers == paper.fully_trained_buffers, label
        first, reference = config.rules[0], paper.rules[0]
        if "linear_adapter" in switch:
            assert first.adapter == "conventional" and first.kinds == reference.kinds
        else:
            differ = {
                k
                for k in first.options.keys() | reference.options.keys()
                if first.options.get(k, None) != reference.options.get(k, None)
            }
            assert differ == set(switch), label
            assert first.options["init"] == "reference"  # the paper's init in every row
        changed |= set(switch)
        count = peft_equi.get_peft_model(copy.deepcopy(small_mace), config).num_trainable_parameters()
        assert count == hybrid + sum(_mmea_count(m, 16, switch) for m in linears), label
    assert changed == {
        "activation",
        "heads",
        "scalar_modulation",
        "higher_order_modulation",
        "gain_sharing",
        "linear_adapter",
    }
