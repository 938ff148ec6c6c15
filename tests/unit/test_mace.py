"""MACE: every adapter and preset, paper parameter counts, merging back to plain MACE, MACE's own LoRA."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from mace_models import batch_of, build_mace, energy_forces, molecules

import peft_equi
from peft_equi.families.mace.calculator import mace_calculator
from peft_equi.families.mace.lora_import import import_mace_lora
from peft_equi.testing import energy_forces_equivariance_error, equivariant_adapters, randomize_adapters

ADAPTERS = equivariant_adapters()
# mmea-paper starts from the reference init, which is not the identity (its shift weights; see
# tests/unit/test_reference_inits.py): the identity is tested with init="identity"
PRESETS = [
    ("mmea-paper", {"init": "identity"}),
    ("elora-paper", {}),
    ("mace-lora", {}),
    ("full", {}),
    ("readout-only", {}),
]
MERGEABLE = {"lora", "elora", "elora-paper", "mace-lora", "full", "readout-only"}


def test_discovery_reaches_every_mace_weight(small_mace):
    found = {layer.path: layer.backend.name for layer in peft_equi.discover(small_mace)}
    linears = [p for p, b in found.items() if b == "e3nn.linear"]
    assert len(linears) == 10 and "interactions.1.linear" in linears and "readouts.1.linear_2" in linears
    assert found["interactions.0.skip_tp"] == "e3nn.tensor_product"
    assert found["interactions.1.conv_tp_weights.layer0"] == "e3nn.fc"
    assert found["products.0.symmetric_contractions"] == "mace.symmetric_contraction"
    assert "interactions.0.conv_tp" not in found  # external weights: fed by the radial MLP
    spec = dict((layer.path, layer.spec) for layer in peft_equi.discover(small_mace))[
        "products.0.symmetric_contractions"
    ]
    assert [p.name for p in spec.paths] == [
        "contractions.0.weights_max",
        "contractions.0.weights.0",
        "contractions.1.weights_max",
        "contractions.1.weights.0",
    ]


@pytest.mark.parametrize(("name", "options"), [(a, {}) for a in ADAPTERS] + PRESETS, ids=lambda v: str(v or ""))
def test_adapted_mace_is_identity_at_init_equivariant_and_merges(small_mace, batch, name, options):
    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), name, **options)
    energy0, forces0 = energy_forces(small_mace, batch)
    energy, forces = energy_forces(model, batch)
    torch.testing.assert_close(energy, energy0, atol=1e-12, rtol=0)
    torch.testing.assert_close(forces, forces0, atol=1e-12, rtol=0)

    randomize_adapters(model, std=0.05)
    with torch.no_grad():  # and move fully trained tensors away from their base values
        for _, (owner, attr) in model.tuner_state.trained.items():
            getattr(owner, attr).mul_(1.1)
    energy, forces = energy_forces(model, batch)
    if model.num_trainable_parameters() and name != "full":
        assert (energy - energy0).abs().max() > 1e-6
    error = energy_forces_equivariance_error(lambda x: energy_forces(model, batch, x), batch["positions"])
    assert error < 1e-9

    if name in MERGEABLE:
        merged = model.merge_and_unload()
        assert type(merged) is type(small_mace)
        assert not any("peft_equi" in type(m).__module__ for m in merged.modules())
        energy_m, forces_m = energy_forces(merged, batch)
        torch.testing.assert_close(energy_m, energy, atol=1e-10, rtol=0)
        torch.testing.assert_close(forces_m, forces, atol=1e-10, rtol=0)
    else:
        with pytest.raises(peft_equi.NotMergeableError):
            model.merge_and_unload()


def _formula_counts(model, rank: int, hybrid: int) -> dict[str, int]:
    """The recipes' parameter counts, computed from the e3nn/MACE modules without peft_equi."""
    counts = {"mmea": 0, "elora_linear": 0, "skip_tp": 0, "weights_max": 0, "radial": 0, "lower": 0}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind == "Linear" and hasattr(module, "instructions"):
            m0_in = sum(mul for mul, ir in module.irreps_in if ir.l == 0 and ir.p == 1)
            counts["mmea"] += (m0_in + 1) * rank + (rank + 1) * module.irreps_out.num_irreps
            simplified = module.irreps_in.simplify()
            counts["elora_linear"] += hybrid * sum(
                mul_in + mul_out
                for mul_in, ir_in in simplified
                for mul_out, ir_out in module.irreps_out
                if ir_in == ir_out
            )
        elif name.endswith("skip_tp"):
            counts["skip_tp"] += hybrid * sum(
                module.irreps_in1[i.i_in1].mul * module.irreps_in2[i.i_in2].mul + module.irreps_out[i.i_out].mul
                for i in module.instructions
            )
        elif kind == "Contraction":
            n_elements, n_paths, channels = module.weights_max.shape
            counts["weights_max"] += hybrid * (n_elements * n_paths + channels)
            counts["lower"] += sum(w.numel() for w in module.weights)
        elif kind == "_Layer":
            counts["radial"] += hybrid * (module.h_in + module.h_out)
    return counts


#: How each method counts MACE's Bessel weights as trainable, as the papers' numbers do.
BESSEL_COUNTED = {
    "full": {"fully_trained_buffers": ["*bessel_weights"]},
    "mmea-paper": {"train_bessel": True},
    "elora-paper": {"train_bessel": True},
}


@pytest.mark.parametrize("rank", [4, 16])
def test_paper_preset_counts_follow_the_formulas(small_mace, rank):
    c = _formula_counts(small_mace, rank, 16)
    common = c["skip_tp"] + c["weights_max"] + c["radial"] + c["lower"]
    for bessel in (False, True):  # the 8 Bessel weights train only with train_bessel (the reference never updates them)
        mmea = peft_equi.get_peft_model(copy.deepcopy(small_mace), "mmea-paper", rank=rank, train_bessel=bessel)
        assert mmea.num_trainable_parameters() == c["mmea"] + common + 8 * bessel
        elora = peft_equi.get_peft_model(copy.deepcopy(small_mace), "elora-paper", train_bessel=bessel)
        assert elora.num_trainable_parameters() == c["elora_linear"] + common + 8 * bessel


def test_paper_table_on_mace_off23_medium():
    """The published trainable-parameter counts on the MACE-OFF23-medium architecture (H, C, O).

    The papers count MACE's 8 Bessel weights (their code sets requires_grad but never optimises them):
    ``train_bessel=True`` on the paper presets, ``fully_trained_buffers`` for full fine-tuning."""
    from mace.modules.lora import inject_lora

    medium = build_mace("medium")
    table = {
        ("full", ()): 751_896,
        ("mmea-paper", (("rank", 16),)): 151_354,
        ("mmea-paper", (("rank", 32),)): 201_258,
        ("elora-paper", (("rank", 16),)): 175_880,
        ("mace-lora", (("rank", 4), ("alpha", 1.0))): 29_396,
        # the MMEA ablations (benchmarks/rmd17.py --ablations, docs/adapters/initialisation.md): not published
        ("mmea-paper", (("heads", "separate"),)): 161_658,
        ("mmea-paper", (("scalar_modulation", False),)): 127_224,
        ("mmea-paper", (("higher_order_modulation", False),)): 133_946,
        ("mmea-paper", (("gain_sharing", "irrep"),)): 134_082,
        ("mmea-paper", (("linear_adapter", "conventional"),)): 333_576,
    }
    for (name, options), expected in table.items():
        options = dict(options) | BESSEL_COUNTED.get(name, {})
        model = peft_equi.get_peft_model(copy.deepcopy(medium), name, **options)
        assert model.num_trainable_parameters() == expected, (name, options)
    inject_lora(medium, rank=4, alpha=1.0)
    assert sum(p.numel() for p in medium.parameters() if p.requires_grad) == 29_396


def test_mace_lora_matches_mace_inject_lora(small_mace, batch):
    """Same A/B values -> same outputs and the same merged weights as mace.modules.lora."""
    from mace.modules.lora import inject_lora, merge_lora_weights

    theirs = copy.deepcopy(small_mace)
    inject_lora(theirs, rank=4, alpha=2.0)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    expected = energy_forces(theirs, batch)
    ours = import_mace_lora(copy.deepcopy(theirs))
    assert ours.peft_config["default"].preset == "mace-lora"
    assert ours.num_trainable_parameters() == sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    for got, want in zip(energy_forces(ours, batch), expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    merged_ours = ours.merge_and_unload().state_dict()
    merged_theirs = merge_lora_weights(theirs).state_dict()
    for key, value in merged_theirs.items():
        if "_compiled_main" not in key:
            torch.testing.assert_close(merged_ours[key], value, atol=1e-12, rtol=0, msg=key)


@pytest.mark.slow
def test_merged_model_runs_with_mace_alone(small_mace, batch, tmp_path):
    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), "elora-paper")
    randomize_adapters(model, std=0.05)
    merged = model.merge_and_unload()
    assert not isinstance(merged.radial_embedding.bessel_fn.bessel_weights, torch.nn.Parameter)
    atoms = molecules(1)[0]
    calc = mace_calculator(merged)
    expected = calc.get_potential_energy(atoms)
    path = tmp_path / "merged.model"
    torch.save(merged, path)
    script = f"""
import json, sys, torch
from ase.io import read
from mace.calculators import MACECalculator
atoms = read({str(tmp_path / "atoms.xyz")!r})
atoms.calc = MACECalculator(model_paths={str(path)!r}, device="cpu", default_dtype="float64")
print(json.dumps({{"energy": atoms.get_potential_energy(), "peft_equi_loaded": "peft_equi" in sys.modules}}))
"""
    atoms.write(tmp_path / "atoms.xyz")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["peft_equi_loaded"] is False
    assert abs(result["energy"] - expected) < 1e-9


def test_ase_calculator_for_unmerged_adapted_model(small_mace, batch):
    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), "mmea-paper", rank=4)
    randomize_adapters(model, std=0.05)
    atoms = molecules(1)[0]
    calc = mace_calculator(model)
    energy, forces = energy_forces(model, batch_of([atoms]))
    atoms.calc = calc
    assert abs(atoms.get_potential_energy() - energy.item()) < 1e-9
    assert abs(atoms.get_forces() - forces.detach().numpy()).max() < 1e-9
    assert any(p.requires_grad for p in model.parameters())  # the calculator froze a copy, not the model


def test_saving_adapted_models_records_what_is_needed(small_mace, batch, tmp_path):
    from peft_equi.families.mace.export import save_adapted_mace

    merged = peft_equi.get_peft_model(copy.deepcopy(small_mace), "elora")
    randomize_adapters(merged, std=0.05)
    assert save_adapted_mace(merged, tmp_path / "elora.model") is True
    assert type(torch.load(tmp_path / "elora.model", weights_only=False)) is type(small_mace)
    assert merged.adapted_layers  # the model itself is left adapted

    gated = peft_equi.get_peft_model(copy.deepcopy(small_mace), "mmea", rank=4)
    randomize_adapters(gated, std=0.05)
    assert save_adapted_mace(gated, tmp_path / "mmea.model") is False
    note = json.loads((tmp_path / "mmea.model.peft_equi.json").read_text())
    assert note["requires"] == "peft_equi" and "mmea" in note["why"]
    loaded = torch.load(tmp_path / "mmea.model", weights_only=False)
    assert "peft_equi" in loaded.peft_equi_required
    torch.testing.assert_close(energy_forces(loaded, batch)[0], energy_forces(gated, batch)[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["mmea-paper", "elora-paper", "mace-lora"])
def test_presets_on_blocks_with_nn_linear_radial_mlp(batch, name):
    from peft_equi.families.mace.architectures import HCO
    from peft_equi.families.mace.architectures import build_mace as build

    base = build("small_nonlinear", HCO)
    model = peft_equi.get_peft_model(copy.deepcopy(base), name)
    radial = [p for p, layer in model.adapted_layers.items() if "conv_tp_weights" in p]
    assert radial and all(model.adapted_layers[p].name == "torch.linear" for p in radial)
    randomize_adapters(model, std=0.05)
    error = energy_forces_equivariance_error(lambda x: energy_forces(model, batch, x), batch["positions"])
    assert error < 1e-9


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapted_energy_stays_continuous_at_the_cutoff(small_mace, name):
    """An atom crossing r_max changes nothing: no adapter adds a constant to a radial network.

    (BitFit biases and FiLM shifts on MACE's bias-free radial MLP made the energy of
    mace-organic-xtb jump by 17 and 111 meV per pair, and BitFit's NVE drift -5.8 meV/atom/ps.)"""
    from ase import Atoms

    model = peft_equi.get_peft_model(copy.deepcopy(small_mace), name)
    randomize_adapters(model)
    inside, outside = (batch_of([Atoms("CO", positions=[[0, 0, 0], [d, 0, 0]])]) for d in (5.0 - 1e-4, 5.0 + 1e-4))
    assert inside["edge_index"].shape[1] == 2 and outside["edge_index"].shape[1] == 0
    energy_in, energy_out = energy_forces(model, inside)[0], energy_forces(model, outside)[0]
    torch.testing.assert_close(energy_in, energy_out, atol=1e-9, rtol=0)
