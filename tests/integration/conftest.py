"""Fixtures of the integration tests: files on disk that several modules train on."""

import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from mace_models import molecules

from peft_equi.families.mace.architectures import HCO, build_mace
from peft_equi.families.mace.potential import mace_batch
from peft_equi.utils.dtype import torch_default_dtype


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A base MACE model file and a dataset labelled by a different random MACE (the 'new level of theory')."""
    with torch_default_dtype(torch.float64):
        root = tmp_path_factory.mktemp("finetune")
        torch.save(build_mace("small", HCO, [-10.0, -1000.0, -2000.0], seed=1), root / "base.model")
        teacher = build_mace("small", HCO, [-13.0, -1030.0, -2040.0], seed=2)
        structures = molecules(24, seed=3)
        out = teacher(mace_batch(structures, HCO, 5.0), compute_force=True)
        forces = np.split(out["forces"].detach().numpy(), np.cumsum([len(a) for a in structures])[:-1])
        for atoms, energy, force in zip(structures, out["energy"].detach().numpy(), forces):
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=force)
        write(root / "data.xyz", structures[:16])
        write(root / "test.xyz", structures[16:])
        yield root
