"""NequIP 0.19: discovery (e3nn layers, self-connection TP, ScalarLinearLayer MLPs), adapters, fine-tuning."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import peft_equi
from peft_equi.data import read_dataset
from peft_equi.potentials.nequip import NequipPotential, preserved_global_state, set_nequip_global_state
from peft_equi.testing import energy_forces_equivariance_error, randomize_adapters
from peft_equi.training import FinetuneConfig, Finetuner

ACETAMIDE = Path(__file__).resolve().parents[1] / "examples" / "data" / "acetamide_gfn2xtb_md.extxyz"
TYPES = ["H", "C", "N", "O"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def nequip_model():
    set_nequip_global_state()
    with preserved_global_state():
        torch.set_default_dtype(torch.float64)
        from nequip.model import NequIPGNNModel

        model = NequIPGNNModel(
            seed=0,
            model_dtype="float64",
            type_names=TYPES,
            r_max=4.0,
            l_max=2,
            num_layers=2,
            num_features=8,
            radial_mlp_depth=1,
            radial_mlp_width=8,
            avg_num_neighbors=5.0,
            per_type_energy_scales={t: 1.0 for t in TYPES},
            per_type_energy_shifts={"H": -10.7, "C": -48.8, "N": -70.9, "O": -102.5},
        )
    return NequipPotential(model, "nequip-small")


@pytest.fixture(scope="module")
def acetamide():
    return read_dataset(ACETAMIDE)


def _energy_forces(potential, model, atoms_list):
    batch = potential.collate(potential.graphs(atoms_list), CPU, torch.float64)
    energy, forces = potential.energy_forces(model, batch, training=False)
    return energy.detach(), forces.detach()


def test_discovery_finds_nequip_layers(nequip_model):
    found = {layer.path: layer.backend.name for layer in peft_equi.discover(nequip_model.model)}
    assert "model.func.layer1_convnet.conv.sc" in found  # self-connection FullyConnectedTensorProduct
    assert sum(b == "e3nn.linear" for b in found.values()) == 4
    assert sum(b == "nequip.scalar_linear" for b in found.values()) == 5  # radial MLPs and the readout
    assert not any(p.endswith("tp_scatter.tp") for p in found)  # external weights


@pytest.mark.parametrize("name", ["lora", "elora", "mmea", "bitfit", "film"])
def test_adapters_on_nequip(nequip_model, acetamide, name):
    potential = nequip_model
    model = peft_equi.get_peft_model(copy.deepcopy(potential.model), name)
    atoms = acetamide.atoms[:2]
    energy0, forces0 = _energy_forces(potential, potential.model, atoms)
    energy, forces = _energy_forces(potential, model, atoms)
    assert torch.equal(energy, energy0) and torch.equal(forces, forces0)
    randomize_adapters(model, std=0.05)
    energy, forces = _energy_forces(potential, model, atoms)
    assert (energy - energy0).abs().max() > 1e-6
    one = atoms[0]

    def fn(positions):
        moved = one.copy()
        moved.positions = positions.numpy()
        return _energy_forces(potential, model, [moved])

    assert energy_forces_equivariance_error(fn, torch.tensor(one.positions)) < 1e-9  # rotations and inversion
    if name in ("lora", "elora"):
        merged = model.merge_and_unload()
        torch.testing.assert_close(_energy_forces(potential, merged, atoms)[0], energy, atol=1e-10, rtol=0)


def test_finetune_nequip_end_to_end(nequip_model, tmp_path):
    potential = NequipPotential(copy.deepcopy(nequip_model.model), "nequip-small")
    config = FinetuneConfig(
        model="nequip-small",
        train=ACETAMIDE,
        n_train=12,
        valid_fraction=0.34,
        epochs=2,
        batch_size=4,
        output=tmp_path,
        progress=False,
        plots=False,
        adapter="mmea",
        adapter_options={"rank": 4},
    )
    result = Finetuner(config, potential).run()
    assert np.isfinite(result["after"]["valid"].forces_mae)
    assert result["after"]["valid"].forces_mae < result["before"]["valid"].forces_mae


NEQUIP_TRAIN_CONFIG = """
run: [train]
seed: 1
cutoff_radius: 4.0
model_type_names: [H, C, N, O]
data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: ${{seed}}
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.ASEDataset
      file_path: {data}
      ase_args: {{format: extxyz}}
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${{model_type_names}}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${{cutoff_radius}}
    train: 8
    val: 4
  train_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: 4, shuffle: true}}
  val_dataloader: {{_target_: torch.utils.data.DataLoader, batch_size: 4}}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${{model_type_names}}
trainer:
  _target_: lightning.Trainer
  accelerator: cpu
  max_epochs: 1
  enable_progress_bar: false
  logger: false
  callbacks:
    - _target_: lightning.pytorch.callbacks.ModelCheckpoint
      dirpath: "${{hydra:runtime.output_dir}}"
      save_last: true
training_module:
  _target_: nequip.train.NequIPLightningModule
  loss: {{_target_: nequip.train.EnergyForceLoss, per_atom_energy: true, coeffs: {{total_energy: 1.0, forces: 1.0}}}}
  val_metrics: {{_target_: nequip.train.EnergyForceMetrics, coeffs: {{total_energy_mae: 1.0, forces_mae: 1.0}}}}
  optimizer: {{_target_: torch.optim.Adam, lr: 0.01}}
  model:
    _target_: nequip.model.NequIPGNNModel
    seed: ${{seed}}
    model_dtype: float64
    type_names: ${{model_type_names}}
    r_max: ${{cutoff_radius}}
    l_max: 1
    num_layers: 2
    num_features: 8
    radial_mlp_width: 8
    avg_num_neighbors: ${{training_data_stats:num_neighbors_mean}}
    per_type_energy_shifts: ${{training_data_stats:per_atom_energy_mean}}
    per_type_energy_scales: ${{training_data_stats:forces_rms}}
"""


def test_packaged_nequip_model_by_path(acetamide, tmp_path):
    """nequip-train (a couple of steps) -> nequip-package -> `.nequip.zip` loaded by path and fine-tuned."""
    import subprocess
    import sys

    from ase.io import write

    from peft_equi.errors import PeftEquiError
    from peft_equi.potentials.base import load_potential

    write(tmp_path / "data.xyz", acetamide.atoms[:12])
    (tmp_path / "train.yaml").write_text(NEQUIP_TRAIN_CONFIG.format(data=tmp_path / "data.xyz"))
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [bin_dir / "nequip-train", "-cp", str(tmp_path), "-cn", "train.yaml", f"hydra.run.dir={tmp_path / 'run'}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    package = tmp_path / "model.nequip.zip"
    subprocess.run(
        [bin_dir / "nequip-package", "build", str(tmp_path / "run" / "last.ckpt"), str(package)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    with pytest.raises(PeftEquiError, match="trust_pickle=True"):
        load_potential(str(package))
    potential = load_potential(str(package), trust_pickle=True)
    from nequip.nn import GraphModel

    assert not isinstance(potential.model, GraphModel)  # the package's own copy of the classes
    layers = peft_equi.discover(potential.model)
    backends = {layer.backend.name for layer in layers}
    assert {"e3nn.linear", "e3nn.tensor_product", "nequip.scalar_linear"} <= backends
    config = FinetuneConfig(
        model=str(package),
        trust_pickle=True,
        train=tmp_path / "data.xyz",
        n_train=8,
        valid_fraction=0.25,
        epochs=1,
        batch_size=3,
        output=tmp_path / "ft",
        progress=False,
        plots=False,
        adapter="elora",
    )
    result = Finetuner(config).run()
    assert np.isfinite(result["after"]["valid"].forces_mae)


def test_nequip_train_with_adapters_from_a_package(acetamide, tmp_path):
    """A nequip-train config whose model is a `.nequip.zip` wrapped by peft_equi's `_target_` trains."""
    import subprocess
    import sys

    from ase.io import write

    write(tmp_path / "data.xyz", acetamide.atoms[:12])
    base = NEQUIP_TRAIN_CONFIG.format(data=tmp_path / "data.xyz")
    (tmp_path / "train.yaml").write_text(base)
    bin_dir = Path(sys.executable).parent
    run = lambda *args: subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, timeout=600)  # noqa: E731
    run(bin_dir / "nequip-train", "-cp", tmp_path, "-cn", "train.yaml", f"hydra.run.dir={tmp_path / 'base'}")
    run(bin_dir / "nequip-package", "build", tmp_path / "base" / "last.ckpt", tmp_path / "base.nequip.zip")
    start = base.index("  model:\n    _target_: nequip.model.NequIPGNNModel")
    adapted = (
        base[:start]
        + f"""  model:
    _target_: peft_equi.integrations.nequip.config.peft_model
    adapter: mmea
    options: {{rank: 4}}
    model:
      _target_: nequip.model.ModelFromPackage
      package_path: {tmp_path / "base.nequip.zip"}
"""
    )
    (tmp_path / "finetune.yaml").write_text(adapted)
    result = run(bin_dir / "nequip-train", "-cp", tmp_path, "-cn", "finetune.yaml", f"hydra.run.dir={tmp_path / 'ft'}")
    assert (tmp_path / "ft" / "last.ckpt").is_file()
    checkpoint = torch.load(tmp_path / "ft" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert any(".adapter.heads.0.weight" in k for k in keys), result.stdout[-500:]
