"""Cutting MACE models to some of their elements: same energies, fewer parameters, used by the engine and CLI."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from mace_models import energy_forces, molecules
from paths import FIXTURES
from typer.testing import CliRunner

import peft_equi
from peft_equi.errors import PeftEquiError, UnknownElementError
from peft_equi.families.mace import subset_elements
from peft_equi.families.mace.architectures import HCO, MACE_OFF23_ELEMENTS, build_mace
from peft_equi.families.mace.export import save_adapted_mace
from peft_equi.families.mace.potential import mace_batch
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi_train import FinetuneConfig, Finetuner
from peft_equi_train.cli import app

HCNO = (1, 6, 7, 8)


def _ten_element_mace(size: str, use_reduced_cg: bool, seed: int = 0) -> torch.nn.Module:
    """A small random MACE for MACE-OFF23's ten elements, with distinct E0s and a non-trivial scale/shift."""
    from mace.tools.scripts_utils import extract_config_mace_model

    from peft_equi.families.mace.loading import instantiate

    energies = [-3.1 * z - 0.2 for z in MACE_OFF23_ELEMENTS]
    model = build_mace(size, MACE_OFF23_ELEMENTS, energies, seed)
    if use_reduced_cg:  # mace 0.3.16's default CG basis (build_mace uses the papers' original one)
        config = extract_config_mace_model(model) | {"use_reduced_cg": True}
        torch.manual_seed(seed)
        model = instantiate(type(model), config, torch.float64)
    with torch.no_grad():
        model.scale_shift.scale.fill_(0.7)
        model.scale_shift.shift.fill_(0.05)
    return model


@pytest.mark.parametrize("use_reduced_cg", [False, True], ids=["original_cg", "reduced_cg"])
@pytest.mark.parametrize("size", ["small", "small_nonlinear"])
def test_cut_model_gives_the_same_energies_and_forces(size, use_reduced_cg):
    full = _ten_element_mace(size, use_reduced_cg)
    before = {k: v.clone() for k, v in full.state_dict().items()}
    structures = molecules(4)  # H, C, O
    energy, forces = energy_forces(full, mace_batch(structures, MACE_OFF23_ELEMENTS, 5.0))
    interaction = full(mace_batch(structures, MACE_OFF23_ELEMENTS, 5.0), compute_force=False)["interaction_energy"]
    assert interaction.abs().min() > 1e-3  # the check below exercises the network, not only the E0s

    cut = subset_elements(full, [8, 1, 6, 8])
    assert cut is not full and type(cut) is type(full)
    assert cut.atomic_numbers.tolist() == list(HCO)  # the model's order, not the caller's
    assert cut.use_reduced_cg is use_reduced_cg
    e0 = full.atomic_energies_fn.atomic_energies[[0, 1, 3]]
    torch.testing.assert_close(cut.atomic_energies_fn.atomic_energies, e0, atol=0, rtol=0)
    assert cut.node_embedding.linear.irreps_in.num_irreps == 3
    assert cut.products[0].symmetric_contractions.contractions[0].weights_max.shape[0] == 3
    n_full = sum(p.numel() for p in full.parameters())
    assert sum(p.numel() for p in cut.parameters()) < n_full

    energy_cut, forces_cut = energy_forces(cut, mace_batch(structures, HCO, 5.0))
    torch.testing.assert_close(energy_cut, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(forces_cut, forces, atol=1e-10, rtol=0)
    assert all(torch.equal(v, before[k]) for k, v in full.state_dict().items())  # the caller's model is untouched

    water = subset_elements(full, [1, 8])  # a two-element cut, on water
    h2o = [a for a in molecules(4) if a.get_chemical_formula() == "H2O"]
    expected = energy_forces(full, mace_batch(h2o, MACE_OFF23_ELEMENTS, 5.0))
    for got, want in zip(energy_forces(water, mace_batch(h2o, (1, 8), 5.0)), expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_unknown_elements_and_adapted_models_are_refused():
    model = build_mace("small", HCO)
    with pytest.raises(UnknownElementError, match=r"does not know N \(Z=7\), Si \(Z=14\); it knows H \(Z=1\)"):
        subset_elements(model, [1, 7, 14])
    assert issubclass(UnknownElementError, PeftEquiError)
    with pytest.raises(PeftEquiError, match="at least one element"):
        subset_elements(model, [])
    adapted = peft_equi.get_peft_model(copy.deepcopy(model), "lora")
    with pytest.raises(PeftEquiError, match="cut the base model first"):
        subset_elements(adapted, [1, 6])
    same = subset_elements(model, HCO)  # nothing to cut: a copy
    assert same is not model and same.atomic_numbers.tolist() == list(HCO)


def test_mace_off23_medium_cut_to_hco_has_the_papers_count():
    """mmea-paper r16 with the Bessel weights counted (as the paper): 249,242 trainable on the ten-element
    MACE-OFF23-medium, 151,354 cut to H, C, O; by default the 8 Bessel weights stay frozen."""
    medium = build_mace("mace_off23_medium", MACE_OFF23_ELEMENTS)

    def count(model, **options):
        adapted = peft_equi.get_peft_model(copy.deepcopy(model), "mmea-paper", rank=16, **options)
        return adapted.num_trainable_parameters()

    assert count(medium, train_bessel=True) == 249_242
    cut = subset_elements(medium, HCO)
    assert count(cut, train_bessel=True) == 151_354
    assert count(cut) == 151_354 - 8


def test_save_adapted_mace_can_cut(tmp_path):
    base = build_mace("small", HCNO, [-13.6, -1029.0, -1486.0, -2041.0])
    structures = molecules(2)
    model = peft_equi.get_peft_model(copy.deepcopy(base), "elora")
    randomize_adapters(model, std=0.05)
    expected = energy_forces(model, mace_batch(structures, HCNO, 5.0))
    assert save_adapted_mace(model, tmp_path / "hco.model", atomic_numbers=HCO) is True
    saved = torch.load(tmp_path / "hco.model", weights_only=False)
    assert saved.atomic_numbers.tolist() == list(HCO)
    for got, want in zip(energy_forces(saved, mace_batch(structures, HCO, 5.0)), expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)

    gated = peft_equi.get_peft_model(copy.deepcopy(base), "mmea", rank=4)
    with pytest.raises(PeftEquiError, match="before get_peft_model"):
        save_adapted_mace(gated, tmp_path / "mmea.model", atomic_numbers=HCO)
    assert not (tmp_path / "mmea.model").exists()
    cut_first = peft_equi.get_peft_model(subset_elements(base, HCO), "mmea", rank=4)
    assert save_adapted_mace(cut_first, tmp_path / "mmea.model", atomic_numbers=HCO) is False


@pytest.fixture(scope="module")
def hcno_files(tmp_path_factory):
    """A base MACE file for H, C, N, O and H/C/O data labelled by another random MACE."""
    with torch_default_dtype(torch.float64):
        root = tmp_path_factory.mktemp("subset")
        torch.save(build_mace("small", HCNO, [-10.0, -1000.0, -1400.0, -2000.0], seed=1), root / "base.model")
        teacher = build_mace("small", HCO, [-13.0, -1030.0, -2040.0], seed=2)
        structures = molecules(16, seed=3)
        out = teacher(mace_batch(structures, HCO, 5.0), compute_force=True)
        forces = np.split(out["forces"].detach().numpy(), np.cumsum([len(a) for a in structures])[:-1])
        for atoms, energy, force in zip(structures, out["energy"].detach().numpy(), forces):
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=force)
        write(root / "data.xyz", structures[:12])
        write(root / "test.xyz", structures[12:])
        yield root


def _run(files, out, **overrides) -> dict:
    options = dict(
        model=str(files / "base.model"),
        trust_pickle=True,
        train=files / "data.xyz",
        test=files / "test.xyz",
        valid_fraction=0.25,
        epochs=1,
        batch_size=3,
        output=out,
        progress=False,
        plots=False,
        adapter="elora-paper",
    )
    return Finetuner(FinetuneConfig(**(options | overrides))).run()


def test_engine_cuts_to_the_data_elements_and_cli_rebuilds_the_cut(hcno_files, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        cut = _run(hcno_files, tmp_path / "cut")
    assert "model cut from 4 to the data's elements (H, C, O)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        whole = _run(hcno_files, tmp_path / "whole", subset_elements=False)
    assert "model cut" not in caplog.text

    base = torch.load(hcno_files / "base.model", weights_only=False)
    expected = peft_equi.get_peft_model(subset_elements(base, HCO), "elora-paper").num_trainable_parameters()
    assert cut["trainable_parameters"] == expected < whole["trainable_parameters"]
    for split in ("valid", "test"):  # the base model's errors do not change with the cut
        b_cut, b_whole = cut["before"][split], whole["before"][split]
        assert abs(b_cut.energy_mae - b_whole.energy_mae) < 1e-6 and abs(b_cut.forces_mae - b_whole.forces_mae) < 1e-6
    correction = json.loads((tmp_path / "cut" / "energy_correction.json").read_text())
    assert correction["atomic_numbers"] == list(HCO)
    merged = torch.load(cut["merged_model"], weights_only=False)
    assert merged.atomic_numbers.tolist() == list(HCO)

    runner = CliRunner()
    model_args = ["--model", str(hcno_files / "base.model"), "--trust-pickle", "--run", str(tmp_path / "cut")]
    result = runner.invoke(app, ["evaluate", *model_args, "--data", str(hcno_files / "test.xyz")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    after = cut["after"]["test"].summary()
    assert all(abs(summary[k] - after[k]) < 1e-6 for k in after), (summary, after)
    result = runner.invoke(app, ["merge", *model_args, "--output", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    again = torch.load(tmp_path / "merged.model", weights_only=False)
    structures = molecules(2)
    for got, want in zip(
        energy_forces(again, mace_batch(structures, HCO, 5.0)), energy_forces(merged, mace_batch(structures, HCO, 5.0))
    ):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_engine_cuts_before_moving_to_cueq(hcno_files, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = _run(hcno_files, tmp_path / "cueq", backend="cueq", adapter="lora", adapter_options={"rank": 2})
    out = caplog.text
    assert out.index("model cut from 4") < out.index("cuequivariance:")
    assert np.isfinite(result["after"]["test"].forces_mae)
    assert json.loads((tmp_path / "cueq" / "energy_correction.json").read_text())["atomic_numbers"] == list(HCO)


def test_cut_of_a_model_file_written_under_e3nn_044():
    """A MACE file like the released ones (e3nn 0.4.4 pickle, original CG basis), cut to H and O: water unchanged."""

    from ase import Atoms

    from peft_equi.families.mace.loading import load_mace_model

    fixtures = FIXTURES
    reference = json.loads((fixtures / "mace_e3nn044_small_ref.json").read_text())
    water = next(s for s in reference["structures"] if s["name"] == "H2O")
    cut = subset_elements(load_mace_model(fixtures / "mace_e3nn044_small.model", trust_pickle=True), [1, 8])
    atoms = Atoms(numbers=water["numbers"], positions=water["positions"])
    energy, forces = energy_forces(cut, mace_batch([atoms], (1, 8), reference["r_max"]))
    assert abs(energy.item() - water["energy"]) < 1e-10
    assert np.abs(forces.numpy() - np.asarray(water["forces"])).max() < 1e-10


@pytest.mark.slow
def test_the_cut_keeps_the_elements_of_retain_and_replay_files(hcno_files, tmp_path, caplog):
    """Retain/replay structures of other elements than the data's (N here) stay in the model when it is cut."""
    from ase.build import molecule
    from ase.io import write

    write(tmp_path / "amines.xyz", [molecule("CH3CN"), molecule("NH3")])
    with caplog.at_level(logging.INFO):
        result = _run(hcno_files, tmp_path / "run", retain=[tmp_path / "amines.xyz"], replay=[tmp_path / "amines.xyz"],
                      replay_ratio=0.5, batch_size=4)  # fmt: skip
    assert "model cut" not in caplog.text  # H, C, N, O: nothing to cut
    assert result["before"]["retain_amines"].forces_mae < 1e-9 < result["after"]["retain_amines"].forces_mae
