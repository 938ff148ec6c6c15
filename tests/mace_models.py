"""MACE models and molecules for the tests (random weights; no downloads)."""

from __future__ import annotations

import numpy as np
import torch

from peft_equi.families.mace.architectures import HCO
from peft_equi.families.mace.architectures import build_mace as _build
from peft_equi.families.mace.potential import mace_batch


def build_mace(size: str = "small", seed: int = 0) -> torch.nn.Module:
    """A random MACE for H, C, O with non-trivial E0s and scale/shift (``small`` or ``medium``)."""
    model = _build("small" if size == "small" else "mace_off23_medium", HCO, [-13.6, -1029.0, -2041.0], seed)
    model.scale_shift.scale.fill_(0.7)
    model.scale_shift.shift.fill_(0.05)
    return model


def molecules(n: int = 2, seed: int = 0):
    """Small H/C/O molecules with perturbed geometries (ase.Atoms)."""
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    names = ["CH3CH2OH", "CH3OH", "H2O", "CH3CHO"]
    out = []
    for i in range(n):
        atoms = molecule(names[i % len(names)])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(atoms)
    return out


def energy_forces(model, batch, positions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached energies and forces of a MACE-like model for ``batch`` (optionally at other ``positions``)."""
    data = dict(batch)
    if positions is not None:
        data["positions"] = positions
    out = model(data, training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def batch_of(atoms_list) -> dict[str, torch.Tensor]:
    """A MACE input dict for ``atoms_list``."""
    return mace_batch(atoms_list, HCO, 5.0)


# the keys ML-MACE's pair_mace.cpp puts into the input dict of an exported file
LAMMPS_KEYS = ["batch", "cell", "edge_index", "energy", "forces", "node_attrs", "positions", "ptr"]
LAMMPS_KEYS += ["shifts", "unit_shifts", "weight"]


def lammps_input(batch):
    """What ML-MACE (no_domain_decomposition: local atoms only, periodic images as shifts) passes an exported file."""
    n = batch["positions"].shape[0]
    data = {key: batch[key].clone() for key in LAMMPS_KEYS if key in batch}
    data["cell"] = data["cell"].reshape(3, 3)
    data["energy"] = torch.empty(1)
    data["forces"] = torch.empty(n, 3)
    data["weight"] = torch.ones(1)
    assert sorted(data) == sorted(LAMMPS_KEYS)
    return data, torch.ones(n, dtype=torch.bool)
