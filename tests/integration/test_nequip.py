"""NequIP 0.19: discovery (e3nn layers, self-connection TP, ScalarLinearLayer MLPs), adapters, fine-tuning."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nequip_models import NEQUIP_OPTIONS, small_nequip
from paths import ROOT

import peft_equi
from peft_equi.families.nequip.potential import NequipPotential, preserved_global_state, set_nequip_global_state
from peft_equi.testing import energy_forces_equivariance_error, equivariant_adapters, randomize_adapters
from peft_equi_train import FinetuneConfig, Finetuner
from peft_equi_train.data import read_dataset

ACETAMIDE = ROOT / "examples" / "data" / "acetamide_gfn2xtb_md.extxyz"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def nequip_model():
    return small_nequip("nequip.model.NequIPGNNModel", **NEQUIP_OPTIONS)


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


@pytest.mark.parametrize("name", equivariant_adapters())
def test_adapters_on_nequip(nequip_model, acetamide, name):
    _check_adapter(nequip_model, acetamide.atoms[:2], name, lambda scale: 1e-9)  # rotations and inversion


def _check_adapter(potential, atoms, name, tolerance) -> None:
    """Identity at init, a change once randomized, O(3) equivariance within ``tolerance(output scale)``, merging."""
    model = peft_equi.get_peft_model(copy.deepcopy(potential.model), name)
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

    scale = max(1.0, energy.abs().max().item(), forces.abs().max().item())
    assert energy_forces_equivariance_error(fn, torch.tensor(one.positions)) < tolerance(scale)
    if name in ("lora", "elora"):
        merged = model.merge_and_unload()
        torch.testing.assert_close(_energy_forces(potential, merged, atoms)[0], energy, atol=1e-10, rtol=0)


@pytest.fixture(scope="module")
def allegro_model():
    return small_nequip(
        "allegro.model.AllegroModel",
        l_max=2,
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": 8},
        radial_chemical_embed_dim=8,
        num_scalar_features=8,
        num_tensor_features=4,
        allegro_mlp_hidden_layers_width=8,
        readout_mlp_hidden_layers_width=8,
    )


@pytest.mark.parametrize("name", equivariant_adapters())
def test_adapters_on_allegro(allegro_model, acetamide, name):
    """Allegro (nequip-allegro): its scalar-track MLPs are adapted; identity at init, O(3)-equivariant, merges."""
    potential = allegro_model
    found = {layer.path: layer.backend.name for layer in peft_equi.discover(potential.model)}
    assert "model.func.allegro.latents.0.mlp.0" in found and "model.func.edge_readout.mlp_module.mlp.2" in found
    assert not any(".tps." in p for p in found)  # the tensor-track Contracter has no backend (see docs/nequip.md)
    if name in ("bitfit", "mmea"):  # every Allegro MLP is bias-free, so must map zero to zero: no constants
        with pytest.raises(peft_equi.RuleMatchError, match="must map zero to zero"):
            peft_equi.get_peft_model(copy.deepcopy(potential.model), name)
        return
    # random FiLM gains compound through Allegro's MLP stacks (outputs up to ~1e4 eV/A): relative to the output scale
    _check_adapter(potential, acetamide.atoms[:2], name, lambda scale: 1e-12 * scale)


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


BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "examples" / "nequip" / "finetune-package.yaml"
COMPILE_FIELDS = ["pos", "edge_index", "atom_types", "cell", "edge_cell_shift"]


def _run(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def package(acetamide, tmp_path_factory):
    """A `.nequip.zip` made by nequip-train (one epoch) + nequip-package, and its 12-structure dataset."""
    from ase.io import write

    folder = tmp_path_factory.mktemp("nequip-package")
    write(folder / "data.xyz", acetamide.atoms[:12])
    (folder / "train.yaml").write_text(NEQUIP_TRAIN_CONFIG.format(data=folder / "data.xyz"))
    _run(BIN / "nequip-train", "-cp", folder, "-cn", "train.yaml", f"hydra.run.dir={folder / 'run'}")
    _run(BIN / "nequip-package", "build", folder / "run" / "last.ckpt", folder / "base.nequip.zip")
    return folder / "base.nequip.zip", folder / "data.xyz"


@pytest.mark.slow
def test_packaged_nequip_model_by_path(package, tmp_path):
    """A `.nequip.zip` loaded by path: the package's own classes are discovered and fine-tuned."""
    from peft_equi.errors import PeftEquiError
    from peft_equi.families.base import load_potential

    package_path, data = package
    with pytest.raises(PeftEquiError, match="trust_pickle=True"):
        load_potential(str(package_path))
    potential = load_potential(str(package_path), trust_pickle=True)
    from nequip.nn import GraphModel

    assert not isinstance(potential.model, GraphModel)  # the package's own copy of the classes
    layers = peft_equi.discover(potential.model)
    backends = {layer.backend.name for layer in layers}
    assert {"e3nn.linear", "e3nn.tensor_product", "nequip.scalar_linear"} <= backends
    config = FinetuneConfig(
        model=str(package_path),
        trust_pickle=True,
        train=data,
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


def _model_from_checkpoint(path: Path):
    set_nequip_global_state()
    from nequip.model import ModelFromCheckpoint

    with preserved_global_state():
        return ModelFromCheckpoint(str(path))["sole_model"]


def _check_compiled(checkpoint, compiled_path, potential, trained, atoms, energy) -> None:
    """``nequip-compile --mode aotinductor`` of ``checkpoint`` gives the eager energies and forces."""
    from nequip.model.inference_models.compiled import load_compiled_model

    _run(BIN / "nequip-compile", checkpoint, compiled_path, "--mode", "aotinductor", "--device", "cpu",
         "--num-frames", "static", "--input-fields", *COMPILE_FIELDS,
         "--output-fields", "atomic_energy", "total_energy", "forces")  # fmt: skip
    compiled, _ = load_compiled_model(str(compiled_path), "cpu")  # fields from its metadata
    for i, one in enumerate(atoms):
        batch = potential.collate(potential.graphs([one]), CPU, torch.float64)
        out = compiled({k: batch[k] for k in COMPILE_FIELDS})
        torch.testing.assert_close(out["total_energy"].reshape(-1), energy[i : i + 1], atol=1e-9, rtol=0)
        torch.testing.assert_close(out["forces"], _energy_forces(potential, trained, [one])[1], atol=1e-9, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["mmea", "elora"])
def test_nequip_train_example_config_on_a_package(package, acetamide, tmp_path, adapter):
    """examples/nequip/finetune-package.yaml trains an adapter on a `.nequip.zip` through nequip-train.

    MMEA refuses to merge and compiles unmerged (nequip-compile --mode aotinductor; about two
    minutes, so once); merged ELoRA packages through the merge_peft_adapters modifier and, merged
    in Python, gives the adapted energies."""
    from nequip.model import modify

    from peft_equi.families.base import load_potential

    package_path, data = package
    _run(
        BIN / "nequip-train",
        "-cp",
        EXAMPLE.parent,
        "-cn",
        EXAMPLE.name,
        f"package_path={package_path}",
        f"data_path={data}",
        f"adapter={adapter}",
        "++adapter_options={rank: 4}",
        f"hydra.run.dir={tmp_path / 'ft'}",
    )
    checkpoint = tmp_path / "ft" / "last.ckpt"
    trained = _model_from_checkpoint(checkpoint)  # rebuilt from the config: package + adapter + trained weights
    adapted = [m for m in trained.modules() if isinstance(m, peft_equi.AdaptedLayer)]
    assert adapted and all(m.adapter.name == adapter for m in adapted)
    base = load_potential(str(package_path), trust_pickle=True)
    potential = NequipPotential(trained, "finetuned")
    atoms = acetamide.atoms[:3]
    energy = _energy_forces(potential, trained, atoms)[0]
    assert (energy - _energy_forces(base, base.model, atoms)[0]).abs().max() > 1e-6  # training moved the adapter
    if adapter == "mmea":
        with pytest.raises(peft_equi.NotMergeableError, match="depends on the layer's input"):
            modify(trained, [{"modifier": "merge_peft_adapters"}])
        assert len([m for m in trained.modules() if isinstance(m, peft_equi.AdaptedLayer)]) == len(adapted)
        _check_compiled(checkpoint, tmp_path / "adapted.nequip.pt2", potential, trained, atoms, energy)
        return
    merged_model = copy.deepcopy(trained)
    peft_equi.merge_adapters(merged_model)
    assert not any(isinstance(m, peft_equi.AdaptedLayer) for m in merged_model.modules())
    torch.testing.assert_close(_energy_forces(potential, merged_model, atoms)[0], energy, atol=1e-9, rtol=0)

    # packaging: the adapted checkpoint packages (peft_equi external), and merges into a plain package
    _run(BIN / "nequip-package", "build", checkpoint, tmp_path / "adapted.nequip.zip")
    merged_package = tmp_path / "merged.nequip.zip"
    _run(
        BIN / "nequip-package",
        "modify",
        tmp_path / "adapted.nequip.zip",
        merged_package,
        "--modifier",
        "merge_peft_adapters",
    )
    merged = load_potential(str(merged_package), trust_pickle=True)
    assert not any(type(m).__module__.startswith("peft_equi") for m in merged.model.modules())
    torch.testing.assert_close(_energy_forces(merged, merged.model, atoms)[0], energy, atol=1e-9, rtol=0)


def test_peft_model_target_takes_hydra_options(nequip_model):
    """The nequip-train `_target_` accepts OmegaConf options (lists included) and adapts the model in place."""
    from omegaconf import OmegaConf

    from peft_equi.families.nequip.config import peft_model

    model = copy.deepcopy(nequip_model.model)
    returned = peft_model(model, "lora", OmegaConf.create({"rank": 2, "paths": ["*"]}))
    assert returned is model
    adapted = [m for m in model.modules() if isinstance(m, peft_equi.AdaptedLayer)]
    assert adapted and all(m.adapter.name == "lora" for m in adapted)
    assert all(p.requires_grad == (".adapter." in n) for n, p in model.named_parameters())


@pytest.mark.parametrize("name", ["mmea", "elora"])
def test_scripted_adapted_nequip_model_gives_the_eager_energies_and_forces(nequip_model, acetamide, name, monkeypatch):
    """The unmerged adapted model compiles with TorchScript (e3nn's ``jit.script``) and gives the eager results."""
    from e3nn.util import jit

    patched = sys.modules.get("torch_geometric.hash_tensor")
    if patched is not None:  # torch_geometric (imported by sevenn) replaces torch.index_select, which breaks NequIP
        monkeypatch.setattr(torch, "index_select", patched._old_index_select)
    potential, atoms = nequip_model, acetamide.atoms[:2]
    model = peft_equi.get_peft_model(copy.deepcopy(potential.model), name)
    randomize_adapters(model, std=0.05)
    energy, forces = _energy_forces(potential, model, atoms)
    scripted = jit.script(copy.deepcopy(model.base_model))
    scripted_energy, scripted_forces = _energy_forces(potential, scripted, atoms)
    torch.testing.assert_close(scripted_energy, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(scripted_forces, forces, atol=1e-10, rtol=0)


def test_merge_adapters_in_place_on_a_nequip_model(nequip_model, acetamide):
    """peft_equi.merge_adapters folds adapters attached in place (no PeftModel) and leaves MMEA models intact."""
    potential = nequip_model
    atoms = acetamide.atoms[:2]
    model = copy.deepcopy(potential.model)
    randomize_adapters(peft_equi.get_peft_model(model, "elora", rank=2), std=0.05)
    energy, forces = _energy_forces(potential, model, atoms)
    merged = peft_equi.merge_adapters(model)
    assert merged is model and not any(isinstance(m, peft_equi.AdaptedLayer) for m in model.modules())
    merged_energy, merged_forces = _energy_forces(potential, model, atoms)
    torch.testing.assert_close(merged_energy, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(merged_forces, forces, atol=1e-10, rtol=0)

    model = copy.deepcopy(potential.model)
    peft_equi.get_peft_model(model, "mmea", rank=2)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(peft_equi.NotMergeableError, match=r"mmea is not mergeable.*layer0_convnet"):
        peft_equi.merge_adapters(model)
    assert sum(isinstance(m, peft_equi.AdaptedLayer) for m in model.modules()) > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("adapter", ["mmea", "elora"])
def test_adapters_with_nequip_cuequivariance_modifier(nequip_model, acetamide, adapter):
    """NequIP's enable_CuEquivariance (cuequivariance's CPU fallback here) composes with adapters in either order."""
    from nequip.model import modify

    potential = nequip_model
    atoms = acetamide.atoms[:2]
    reference = copy.deepcopy(potential.model)
    torch.manual_seed(0)
    randomize_adapters(peft_equi.get_peft_model(reference, adapter, rank=2), std=0.05)
    energy, forces = _energy_forces(potential, reference, atoms)

    after = copy.deepcopy(reference)  # adapters first, then the modifier
    modify(after, [{"modifier": "enable_CuEquivariance"}])
    before = modify(copy.deepcopy(potential.model), [{"modifier": "enable_CuEquivariance"}])  # modifier first
    peft_equi.get_peft_model(before, adapter, rank=2)
    missing, unexpected = before.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected and all(".tp_scatter.tp_conv." in k for k in missing)  # cuequivariance's own constants
    for model in (after, before):
        assert any("CuEquivariance" in type(m).__name__ for m in model.modules())
        got_energy, got_forces = _energy_forces(potential, model, atoms)
        torch.testing.assert_close(got_energy, energy, atol=1e-9, rtol=0)
        torch.testing.assert_close(got_forces, forces, atol=1e-9, rtol=0)
    one = atoms[0]

    def fn(positions):
        moved = one.copy()
        moved.positions = positions.numpy()
        return _energy_forces(potential, after, [moved])

    assert energy_forces_equivariance_error(fn, torch.tensor(one.positions)) < 1e-9


@pytest.mark.slow
def test_nequip_train_with_adapters_from_a_package(package, tmp_path):
    """A nequip-train config (the test template) whose model is a `.nequip.zip` wrapped by peft_equi's `_target_`."""
    package_path, data = package
    base = NEQUIP_TRAIN_CONFIG.format(data=data)
    start = base.index("  model:\n    _target_: nequip.model.NequIPGNNModel")
    adapted = (
        base[:start]
        + f"""  model:
    _target_: peft_equi.families.nequip.config.peft_model
    adapter: mmea
    options: {{rank: 4}}
    model:
      _target_: nequip.model.ModelFromPackage
      package_path: {package_path}
"""
    )
    (tmp_path / "finetune.yaml").write_text(adapted)
    result = _run(BIN / "nequip-train", "-cp", tmp_path, "-cn", "finetune.yaml", f"hydra.run.dir={tmp_path / 'ft'}")
    assert (tmp_path / "ft" / "last.ckpt").is_file()
    checkpoint = torch.load(tmp_path / "ft" / "last.ckpt", map_location="cpu", weights_only=False)
    keys = checkpoint["state_dict"].keys()
    assert any(".adapter.heads.0.weight" in k for k in keys), result.stdout[-500:]
