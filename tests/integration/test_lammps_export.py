"""LAMMPS export of adapted MACE: the saved TorchScript file, called as ML-MACE calls it, gives the eager results.

``export_lammps`` does what mace's ``create_lammps_model`` does (``LAMMPS_MACE`` + e3nn's
``jit.compile``).  Here the file is loaded with ``torch.jit.load`` and called with the inputs
ACEsuit's ``pair_style mace no_domain_decomposition`` builds (the same dict keys, dtypes and
``forward(input, mask, compute_virials)`` call), which no LAMMPS installable here has; our own
pair style runs the file in real LAMMPS in ``test_lammps_plugin.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mace_models import batch_of, build_mace, energy_forces, lammps_input, molecules

import peft_equi
from peft_equi.errors import NotMergeableError
from peft_equi.families.mace.export import export_lammps
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype


@pytest.fixture(scope="module")
def setup():
    with torch_default_dtype(torch.float64):
        molecule = molecules(1, seed=3)[0]
        periodic = molecule.copy()  # a small periodic cell: edges cross the boundary (non-zero shifts)
        periodic.set_cell(np.diag([6.0, 6.5, 7.0]))
        periodic.set_pbc(True)
        periodic.center()
        yield build_mace("small"), {"molecule": molecule, "periodic": periodic}


@pytest.mark.parametrize(("name", "merge", "merged"), [("mmea-paper", None, False), ("elora", None, True)])
def test_exported_model_gives_the_eager_energies_forces_and_virials(setup, tmp_path, name, merge, merged):
    base, structures = setup
    model = peft_equi.get_peft_model(copy.deepcopy(base), name)
    randomize_adapters(model, std=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = export_lammps(model, tmp_path / "model-lammps.pt", merge=merge)

    # the eager model is untouched: still adapted, still trainable, same weights
    assert model.adapted_layers and any(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    exported = torch.jit.load(str(path))
    names = dict(exported.named_parameters())
    assert any("base_layer" in n for n in names) != merged
    # what pair_coeff reads: r_max, num_interactions, atomic_numbers, and the dtype probe
    buffers = {**names, **dict(exported.named_buffers())}
    assert buffers["model.node_embedding.linear.weight"].dtype == torch.float64
    assert float(exported.r_max) == float(base.r_max)
    assert int(exported.num_interactions) == int(base.num_interactions)
    assert exported.atomic_numbers.tolist() == base.atomic_numbers.tolist()

    for label, atoms in structures.items():
        batch = batch_of([atoms])
        if label == "periodic":
            assert batch["unit_shifts"].abs().sum() > 0
        energy, forces = energy_forces(model, batch)
        assert (energy_forces(base, batch)[1] - forces).abs().max() > 1e-4  # the adapters matter
        virials = model(dict(batch), training=False, compute_force=True, compute_virials=True)["virials"].detach()
        data, mask = lammps_input(batch)
        out = exported(data, mask, True)
        torch.testing.assert_close(out["total_energy_local"].detach(), energy, atol=1e-10, rtol=0)
        torch.testing.assert_close(out["forces"], forces, atol=1e-10, rtol=0)
        torch.testing.assert_close(out["virials"], virials, atol=1e-10, rtol=0)
        torch.testing.assert_close(out["node_energy"].sum().detach(), energy.sum(), atol=1e-10, rtol=0)
        data, mask = lammps_input(batch)
        out = exported(data, mask, False)  # LAMMPS without a virial this step
        torch.testing.assert_close(out["forces"], forces, atol=1e-10, rtol=0)


def test_merge_options(setup, tmp_path):
    base, structures = setup
    mmea = peft_equi.get_peft_model(copy.deepcopy(base), "mmea-paper")
    with pytest.raises(NotMergeableError):
        export_lammps(mmea, tmp_path / "x.pt", merge=True)
    with pytest.raises(ValueError, match="dtype"):
        export_lammps(mmea, tmp_path / "x.pt", dtype="float16")

    # elora kept unmerged (merge=False) gives the merged export's results; float32 export runs in float32
    elora = peft_equi.get_peft_model(copy.deepcopy(base), "elora")
    randomize_adapters(elora, std=0.05)
    batch = batch_of([structures["periodic"]])
    energy, forces = energy_forces(elora, batch)
    unmerged = torch.jit.load(str(export_lammps(elora, tmp_path / "u.pt", merge=False)))
    assert any("base_layer" in n for n, _ in unmerged.named_parameters())
    out = unmerged(*lammps_input(batch), False)
    torch.testing.assert_close(out["total_energy_local"].detach(), energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["forces"], forces, atol=1e-10, rtol=0)

    single = torch.jit.load(str(export_lammps(elora, tmp_path / "f.pt", dtype="float32", merge=False)))
    assert dict(single.named_buffers())["model.node_embedding.linear.weight"].dtype == torch.float32
    data, mask = lammps_input(batch)
    data = {k: v.float() if v.is_floating_point() else v for k, v in data.items()}
    out = single(data, mask, False)
    assert out["forces"].dtype == torch.float32
    torch.testing.assert_close(out["total_energy_local"].double().detach(), energy, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(out["forces"].double(), forces, atol=1e-3, rtol=1e-4)


def _verlet(forces_of, atoms, steps, dt_fs=0.5):
    """Velocity-Verlet NVE (ASE units); returns the positions of every step."""
    from ase import units

    atoms = atoms.copy()
    masses = atoms.get_masses()[:, None]
    velocities = np.random.default_rng(0).normal(scale=0.01, size=atoms.positions.shape)
    dt = dt_fs * units.fs
    forces = forces_of(atoms)
    path = []
    for _ in range(steps):
        velocities += 0.5 * dt * forces / masses
        atoms.positions += dt * velocities
        forces = forces_of(atoms)
        velocities += 0.5 * dt * forces / masses
        path.append(atoms.positions.copy())
    return np.array(path)


def test_md_driven_by_the_exported_file_follows_the_eager_trajectory(setup, tmp_path):
    """A stand-in for a LAMMPS run: 20 NVE steps whose forces come from the file, called as ML-MACE calls it."""
    base, structures = setup
    model = peft_equi.get_peft_model(copy.deepcopy(base), "mmea-paper")
    randomize_adapters(model, std=0.05)
    exported = torch.jit.load(str(export_lammps(model, tmp_path / "model-lammps.pt")))

    def from_file(atoms):
        return exported(*lammps_input(batch_of([atoms])), False)["forces"].numpy()

    def eager(atoms):
        return energy_forces(model, batch_of([atoms]))[1].numpy()

    path = _verlet(from_file, structures["periodic"], 20)
    np.testing.assert_allclose(path, _verlet(eager, structures["periodic"], 20), atol=1e-10, rtol=0)
    assert np.abs(path[-1] - structures["periodic"].positions).max() > 1e-3  # the atoms moved
