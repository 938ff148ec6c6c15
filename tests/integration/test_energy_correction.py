"""Every deployed form of a fine-tuned model gives the engine's fine-tuned ABSOLUTE energies.

The engine adds a per-element correction to the model's energies (``energy_correction.json``);
each family folds it into the model's own per-element energies.  Per family, the files a run
writes (and ``peft-equi merge``, ``save_adapted_mace``) are loaded back and evaluated without
any correction: their energies equal the engine's predictions on the test set.  The LAMMPS
files of ``export_lammps`` are called here as LAMMPS calls them; tests/integration/test_lammps_plugin.py
runs such a file in LAMMPS.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from finetune_setup import finetune_config
from mace_models import build_mace, lammps_input, molecules
from nequip_models import NEQUIP_OPTIONS, TYPES, small_nequip
from paths import ROOT
from typer.testing import CliRunner

from peft_equi.energy_correction import EnergyCorrection
from peft_equi.errors import EnergyShiftError, PeftEquiError, UnknownElementError
from peft_equi.families.base import load_potential
from peft_equi.families.mace.architectures import HCO
from peft_equi.families.mace.export import export_lammps, save_adapted_mace
from peft_equi.families.mace.potential import MacePotential, mace_batch
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi_train import FinetuneConfig, Finetuner
from peft_equi_train.cli import app
from peft_equi_train.data import read_dataset
from peft_equi_train.evaluation import predict

ACETAMIDE = ROOT / "examples" / "data" / "acetamide_gfn2xtb_md.extxyz"
CPU = torch.device("cpu")


def engine_predictions(finetuner: Finetuner, data) -> np.ndarray:
    """The engine's fine-tuned energies (model + correction) on ``data``."""
    return predict(finetuner.potential, finetuner.model, finetuner.prepare(data), 4, finetuner.collate)[0]


def energies_of(potential, model, atoms) -> np.ndarray:
    """``model``'s own energies (no correction added), in its dtype."""
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    batch = potential.collate(potential.graphs(atoms), CPU, dtype)
    return potential.energy_forces(model, batch, training=False)[0].detach().double().numpy()


@pytest.fixture(scope="module")
def mace_runs(files, tmp_path_factory):
    """Runs on the ``files`` data (labelled by another MACE, other E0s): LoRA (mergeable) and MMEA (not)."""
    root = tmp_path_factory.mktemp("corrected-runs")
    test = read_dataset(files / "test.xyz")
    out = {}
    with torch_default_dtype(torch.float64):
        for adapter in ("lora", "mmea"):
            config = finetune_config(files, root / adapter, epochs=1, plots=False, adapter=adapter)
            finetuner = Finetuner(config)
            finetuner.run()
            out[adapter] = (finetuner, root / adapter, engine_predictions(finetuner, test))
    return out, test


def test_the_correction_is_large_here(mace_runs):
    """The data's E0s differ from the base model's by eV per atom: a file without the correction fails the tests."""
    runs, test = mace_runs
    finetuner, run, expected = runs["lora"]
    uncorrected = energies_of(finetuner.potential, finetuner.model, test.atoms)
    assert np.abs(expected - uncorrected).min() > 1.0
    correction = EnergyCorrection.read(run)
    assert correction.atomic_numbers == tuple(HCO) and min(abs(d) for d in correction.delta) > 1.0


@pytest.mark.parametrize("form", ["run merged.model", "peft-equi merge", "save_adapted_mace"])
def test_mergeable_mace_forms_give_the_fine_tuned_energies(mace_runs, files, tmp_path, form):
    runs, test = mace_runs
    finetuner, run, expected = runs["lora"]
    if form == "run merged.model":
        path = run / "merged.model"
    elif form == "peft-equi merge":
        args = ["merge", "--model", str(files / "base.model"), "--trust-pickle", "--run", str(run)]
        result = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "merged")])
        assert result.exit_code == 0, result.output
        assert "with the per-element energy correction" in result.output
        path = tmp_path / "merged.model"
    else:
        path = tmp_path / "saved.model"
        assert save_adapted_mace(finetuner.model, path, energy_shift=run) is True
    deployed = torch.load(path, weights_only=False)
    assert type(deployed).__name__ == "ScaleShiftMACE"  # plain MACE: mace-torch alone runs it
    np.testing.assert_allclose(energies_of(finetuner.potential, deployed, test.atoms), expected, atol=1e-9, rtol=0)


def test_unmerged_mace_file_gives_the_fine_tuned_energies(mace_runs, tmp_path):
    runs, test = mace_runs
    finetuner, run, expected = runs["mmea"]
    assert json.loads((run / "results.json").read_text())["merged_model"] is None
    before = {k: v.clone() for k, v in finetuner.model.state_dict().items()}
    assert (
        save_adapted_mace(finetuner.model, tmp_path / "adapted.model", energy_shift=run / "energy_correction.json")
        is False
    )
    assert all(torch.equal(v, finetuner.model.state_dict()[k]) for k, v in before.items())  # the model kept as it was
    deployed = torch.load(tmp_path / "adapted.model", weights_only=False)
    np.testing.assert_allclose(energies_of(finetuner.potential, deployed, test.atoms), expected, atol=1e-9, rtol=0)


def test_ase_calculator_with_the_correction_gives_the_fine_tuned_energies(mace_runs):
    from peft_equi.families.mace.calculator import mace_calculator

    runs, test = mace_runs
    finetuner, run, expected = runs["mmea"]
    calculator = mace_calculator(finetuner.model, energy_shift=run)
    energies = [calculator.get_potential_energy(atoms.copy()) for atoms in test.atoms]
    np.testing.assert_allclose(energies, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize(("adapter", "merge"), [("lora", None), ("lora", False), ("mmea", None)])
def test_lammps_files_give_the_fine_tuned_energies(mace_runs, tmp_path, adapter, merge):
    runs, test = mace_runs
    finetuner, run, expected = runs[adapter]
    exported = torch.jit.load(str(export_lammps(finetuner.model, tmp_path / "model.pt", merge=merge, energy_shift=run)))
    assert any("base_layer" in n for n, _ in exported.named_parameters()) == (merge is False or adapter == "mmea")
    energies = [exported(*lammps_input(mace_batch([a], HCO, 5.0)), False)["total_energy_local"] for a in test.atoms]
    np.testing.assert_allclose([e.item() for e in energies], expected, atol=1e-9, rtol=0)


def test_energy_shift_forms_and_bad_corrections(tmp_path):
    with torch_default_dtype(torch.float64):
        model = build_mace("small")
        atoms = molecules(2)
        potential = MacePotential(model, "small")
        before = energies_of(potential, model, atoms)
        counts = np.array([[np.sum(a.numbers == z) for z in HCO] for a in atoms])
        delta = np.array([0.5, -1.5, 2.0])
        EnergyCorrection(tuple(HCO), tuple(delta)).write(tmp_path)
        forms = [
            tmp_path,
            tmp_path / "energy_correction.json",
            {"H": 0.5, "C": -1.5, "O": 2.0},
            {1: 0.5, 6: -1.5, 8: 2.0},
        ]
        for form in forms:
            folded = potential.fold_energy_shift(copy.deepcopy(model), form)
            np.testing.assert_allclose(energies_of(potential, folded, atoms), before + counts @ delta, atol=1e-10)
        # elements the correction leaves out get none; elements the model lacks are refused
        folded = potential.fold_energy_shift(copy.deepcopy(model), {"C": -1.5})
        np.testing.assert_allclose(energies_of(potential, folded, atoms), before + counts[:, 1] * -1.5, atol=1e-10)
        with pytest.raises(UnknownElementError, match=r"does not know: N \(Z=7\)"):
            potential.fold_energy_shift(copy.deepcopy(model), {"N": 1.0})
    bad = {
        "not json": "{",
        "no delta": json.dumps({"atomic_numbers": [1]}),
        "lengths": json.dumps({"atomic_numbers": [1, 6], "delta_eV": [0.1]}),
        "nan": json.dumps({"atomic_numbers": [1], "delta_eV": [float("nan")]}),
        "repeated": json.dumps({"atomic_numbers": [1, 1], "delta_eV": [0.1, 0.2]}),
    }
    for name, text in bad.items():
        (tmp_path / f"{name}.json").write_text(text)
        with pytest.raises(PeftEquiError, match="energy correction"):
            EnergyCorrection.read(tmp_path / f"{name}.json")
    with pytest.raises(PeftEquiError, match="energy_shift must be"):
        EnergyCorrection.of([0.1, 0.2])


@pytest.mark.slow
def test_nequip_run_merged_state_gives_the_fine_tuned_energies(tmp_path):
    potential = small_nequip("nequip.model.NequIPGNNModel", **NEQUIP_OPTIONS)
    config = FinetuneConfig(
        model="nequip-small",
        train=ACETAMIDE,
        n_train=8,
        valid_fraction=0.25,
        test_on_rest=True,
        n_test=4,
        epochs=1,
        batch_size=2,
        output=tmp_path,
        progress=False,
        plots=False,
        adapter="lora",
        adapter_options={"rank": 2},
    )
    finetuner = Finetuner(config, potential)
    finetuner.run()
    test = read_dataset(ACETAMIDE).subset(range(100, 104))
    expected = engine_predictions(finetuner, test)
    assert np.abs(expected - energies_of(finetuner.potential, finetuner.model, test.atoms)).min() > 1.0
    unmerged = finetuner.potential.fold_energy_shift(copy.deepcopy(finetuner.model), tmp_path)
    np.testing.assert_allclose(energies_of(finetuner.potential, unmerged, test.atoms), expected, atol=1e-9, rtol=0)
    fresh = small_nequip("nequip.model.NequIPGNNModel", **NEQUIP_OPTIONS)  # the architecture, per-type shifts
    fresh.model.load_state_dict(torch.load(tmp_path / "merged.nequip-state.pt", weights_only=True))
    np.testing.assert_allclose(energies_of(fresh, fresh.model, test.atoms), expected, atol=1e-9, rtol=0)


def test_nequip_single_shift_becomes_per_type(tmp_path):
    """A model built with one shift for all types gets per-type shifts, as nequip's modify_PerTypeScaleShift does."""
    acetamide = read_dataset(ACETAMIDE).atoms[:2]
    shared = small_nequip("nequip.model.NequIPGNNModel", shifts=-50.0, **NEQUIP_OPTIONS)
    before = energies_of(shared, shared.model, acetamide)
    delta = {"H": 0.1, "C": -0.2, "N": 0.3, "O": -0.4}
    folded = shared.fold_energy_shift(copy.deepcopy(shared.model), delta)
    counts = np.array([[a.get_chemical_symbols().count(t) for t in TYPES] for a in acetamide])
    expected = before + counts @ np.array([delta[t] for t in TYPES])
    np.testing.assert_allclose(energies_of(shared, folded, acetamide), expected, atol=1e-10, rtol=0)
    per_type = small_nequip("nequip.model.NequIPGNNModel", shifts={t: 0.0 for t in TYPES}, **NEQUIP_OPTIONS)
    per_type.model.load_state_dict(folded.state_dict())
    np.testing.assert_allclose(energies_of(per_type, per_type.model, acetamide), expected, atol=1e-10, rtol=0)


@pytest.mark.slow
def test_sevenn_run_merged_checkpoint_gives_the_fine_tuned_energies(tmp_path):
    config = FinetuneConfig(
        model="7net-0",
        train=ACETAMIDE,
        n_train=6,
        valid_fraction=0.34,
        epochs=1,
        batch_size=2,
        output=tmp_path,
        progress=False,
        plots=False,
        adapter="lora",
        adapter_options={"rank": 2},
        dtype="float32",  # SevenNet's own precision (and twice as fast on a CPU)
    )
    finetuner = Finetuner(config)
    finetuner.run()
    test = read_dataset(ACETAMIDE).subset(range(100, 102))
    expected = engine_predictions(finetuner, test)
    assert np.abs(expected - energies_of(finetuner.potential, finetuner.model, test.atoms)).min() > 0.1
    unmerged = finetuner.potential.fold_energy_shift(copy.deepcopy(finetuner.model), tmp_path)
    np.testing.assert_allclose(energies_of(finetuner.potential, unmerged, test.atoms), expected, atol=1e-3, rtol=0)
    deployed = load_potential(str(tmp_path / "merged.pth"), dtype=torch.float32)
    np.testing.assert_allclose(energies_of(deployed, deployed.model, test.atoms), expected, atol=2e-3, rtol=0)

    # a model with one shift for all species (sevenn's Rescale) has no place for a per-element correction
    shared = copy.deepcopy(finetuner.potential.model)
    block = shared.rescale_atomic_energy
    block.shift = torch.nn.Parameter(block.shift[:1].clone(), requires_grad=False)
    with pytest.raises(EnergyShiftError, match="one energy shift for all species"):
        finetuner.potential.fold_energy_shift(shared, {1: 0.1, 6: 0.2})
    assert block.shift.shape == (1,)
