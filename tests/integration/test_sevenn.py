"""SevenNet-0, the real pretrained foundation model shipped in the sevenn wheel: adapters and fine-tuning."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from paths import ROOT
from typer.testing import CliRunner

import peft_equi
from peft_equi.families.base import load_potential
from peft_equi.testing import energy_forces_equivariance_error, equivariant_adapters, randomize_adapters
from peft_equi_train.cli import app
from peft_equi_train.data import read_dataset

ACETAMIDE = ROOT / "examples" / "data" / "acetamide_gfn2xtb_md.extxyz"
RMD17_ETHANOL = ROOT.parent / "shared" / "data" / "rmd17" / "rmd17_ethanol_train_01.npz"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sevennet():
    return load_potential("7net-0", dtype=torch.float64)


@pytest.fixture(scope="module")
def acetamide():
    return read_dataset(ACETAMIDE).subset(range(3))


def _energy_forces(potential, model, atoms_list):
    batch = potential.collate(potential.graphs(atoms_list), CPU, torch.float64)
    energy, forces = potential.energy_forces(model, batch, training=False)
    return energy.detach(), forces.detach()


def test_sevennet0_loads_offline_and_is_discovered(sevennet):
    assert sum(p.numel() for p in sevennet.model.parameters() if p.requires_grad) == 842_440
    layers = peft_equi.discover(sevennet.model)
    backends = [layer.backend.name for layer in layers]
    assert backends.count("e3nn.linear") == 18 and backends.count("e3nn.fc") == 15
    assert {1, 6, 7, 8} <= set(sevennet.atomic_numbers)


def test_readout_only_preset_finds_the_sevennet_readout(sevennet):
    model = peft_equi.get_peft_model(copy.deepcopy(sevennet.model), "readout-only")
    trained = {n for n, p in model.base_model.named_parameters() if p.requires_grad}
    assert trained == {"reduce_input_to_hidden.linear.weight", "reduce_hidden_to_energy.linear.weight"}


@pytest.mark.parametrize("name", equivariant_adapters())
def test_adapters_on_sevennet0_identity_then_rotation_equivariant(sevennet, acetamide, name):
    model = peft_equi.get_peft_model(copy.deepcopy(sevennet.model), name)
    energy0, forces0 = _energy_forces(sevennet, sevennet.model, acetamide.atoms)
    energy, forces = _energy_forces(sevennet, model, acetamide.atoms)
    assert torch.equal(energy, energy0) and torch.equal(forces, forces0)
    randomize_adapters(model, std=1e-3 if name == "film" else 0.02)  # FiLM's gains compound over 5 layers
    assert (_energy_forces(sevennet, model, acetamide.atoms)[0] - energy0).abs().max() > 1e-6
    one = acetamide.atoms[0]

    def potential(positions):
        atoms = one.copy()
        atoms.positions = positions.numpy()
        return _energy_forces(sevennet, model, [atoms])

    # SevenNet-0 was trained with is_parity=False: rotations only (the base model is not inversion-symmetric)
    error = energy_forces_equivariance_error(potential, torch.tensor(one.positions), inversion=False)
    assert error < 1e-7


def test_merged_sevennet_checkpoint_loads_in_sevennet_calculator(sevennet, acetamide, tmp_path):
    from sevenn.calculator import SevenNetCalculator

    model = peft_equi.get_peft_model(copy.deepcopy(sevennet.model), "elora", rank=2)
    randomize_adapters(model, std=0.02)
    expected, _ = _energy_forces(sevennet, model, acetamide.atoms[:1])
    path = sevennet.save(model.merge_and_unload(), tmp_path / "merged")
    atoms = acetamide.atoms[0].copy()
    torch.set_default_dtype(torch.float32)  # sevenn builds models in float32 (the conftest default is float64)
    atoms.calc = SevenNetCalculator(str(path), device="cpu")
    assert abs(atoms.get_potential_energy() - expected.item()) < 1e-3  # the calculator runs in float32


def test_scripted_adapted_sevennet0_gives_the_eager_energies_and_forces(acetamide):
    """Unmerged MMEA on SevenNet-0 compiles as sevenn's deploy does (e3nn's ``jit.script``), in float32.

    As in ``sevenn.scripts.deploy``, the compiled model takes element indices (``eval_type_map``
    off).  Float64 SevenNet is not covered: its one-hot encoding is cast by a Python forward hook.
    """
    from e3nn.util import jit

    potential = load_potential("7net-0", dtype=torch.float32)
    batch = potential.collate(potential.graphs(acetamide.atoms[:2]), CPU, torch.float32)
    batch["x"] = potential.model.z_to_onehot_tensor[batch["atomic_numbers"]]
    model = peft_equi.get_peft_model(copy.deepcopy(potential.model), "mmea")
    model.base_model.eval_type_map = False
    randomize_adapters(model, std=0.02)
    energy, forces = potential.energy_forces(model.base_model, batch, training=False)
    scripted = jit.script(copy.deepcopy(model.base_model)).eval()
    out = scripted({k: v for k, v in batch.clone().to_dict().items() if isinstance(v, torch.Tensor)})
    torch.testing.assert_close(out["inferred_total_energy"], energy.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(out["inferred_force"], forces.detach(), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name", equivariant_adapters())
def test_cli_finetunes_sevennet0_on_rmd17_with_every_adapter(name, tmp_path):
    data = RMD17_ETHANOL if RMD17_ETHANOL.is_file() else ACETAMIDE  # CI has ../shared/data
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "--model",
            "7net-0",
            "--adapter",
            name,
            "--train",
            str(data),
            "--n-train",
            "6",
            "--valid-fraction",
            "0.34",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--dtype",
            "float32",
            "--output",
            str(tmp_path),
            "--no-progress",
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["after"]["valid"]["forces_mae_meV_per_A"] > 0
