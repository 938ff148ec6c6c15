"""The engine's per-element energies: ``e0s: average`` is mace's ``--E0s=average``, ``fit`` is not.

``average`` must give mace's own ``compute_average_E0s`` on the same data, and the model must
start exactly where mace's does: a MACE whose atomic energies are replaced by those E0s.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from finetune_setup import finetune_config

from peft_equi.errors import PeftEquiError
from peft_equi.families import load_potential
from peft_equi.families.base import Potential
from peft_equi_train import Finetuner
from peft_equi_train.data import read_dataset
from peft_equi_train.engine import load_splits
from peft_equi_train.evaluation import predict
from peft_equi_train.loader import prepare
from peft_equi_train.reference import energy_correction


def mace_average_e0s(dataset, atomic_numbers) -> dict[int, float]:
    """mace's ``compute_average_E0s`` on ``dataset`` (its Configurations built by mace's own reader)."""
    from mace.data.utils import KeySpecification, compute_average_E0s, config_from_atoms
    from mace.tools.utils import AtomicNumberTable

    keys = KeySpecification(info_keys={"energy": "REF_energy"}, arrays_keys={})
    configs = []
    for atoms, energy in zip(dataset.atoms, dataset.energies):
        atoms = atoms.copy()
        atoms.info["REF_energy"] = float(energy)
        configs.append(config_from_atoms(atoms, key_specification=keys))
    return compute_average_E0s(configs, AtomicNumberTable(sorted(int(z) for z in atomic_numbers)))


@pytest.fixture(scope="module")
def mace(files):
    return load_potential(str(files / "base.model"), dtype=torch.float64, trust_pickle=True)


@pytest.mark.parametrize("composition", ["mixed", "one molecule"])
def test_average_is_maces_compute_average_e0s_and_starts_where_mace_starts(files, mace, composition):
    data = read_dataset(files / "data.xyz", "energy", "forces")
    if composition == "one molecule":  # rMD17's case: one composition, the minimum-norm solution
        data = data.subset([i for i, a in enumerate(data.atoms) if a.get_chemical_formula() == "C2H6O"])
        assert len(data) >= 3 and len({a.get_chemical_formula() for a in data.atoms}) == 1
    shift = energy_correction(mace, mace.model, data, "average", batch_size=8)
    ours = dict(zip(mace.atomic_numbers, shift + mace.atomic_energies()))
    theirs = mace_average_e0s(data, mace.atomic_numbers)
    assert ours.keys() == theirs.keys()
    for z in ours:
        assert ours[z] == pytest.approx(theirs[z], abs=1e-9, rel=0), z

    # the starting model: mace's fine-tuning model carries these E0s as its atomic energies
    replaced = copy.deepcopy(mace.model)
    energies = torch.tensor([theirs[z] for z in mace.atomic_numbers], dtype=torch.float64)
    replaced.atomic_energies_fn.atomic_energies.copy_(
        energies.reshape(replaced.atomic_energies_fn.atomic_energies.shape)
    )
    test = read_dataset(files / "test.xyz", "energy", "forces")
    with_shift, forces = predict(mace, mace.model, prepare(mace, test, shift), batch_size=8)
    mace_start, mace_forces = predict(mace, replaced, prepare(mace, test), batch_size=8)
    np.testing.assert_allclose(with_shift, mace_start, atol=1e-9, rtol=0)
    np.testing.assert_array_equal(forces, mace_forces)
    # the offset the papers' runs start with: the model's interaction energy, not a residual
    residual = energy_correction(mace, mace.model, data, "fit", batch_size=8)
    fit_start, _ = predict(mace, mace.model, prepare(mace, data, residual), batch_size=8)
    average_start, _ = predict(mace, mace.model, prepare(mace, data, shift), batch_size=8)
    assert np.abs(fit_start - data.energies).mean() < np.abs(average_start - data.energies).mean()


def test_average_in_the_engine_and_its_record(files, tmp_path):
    finetuner = Finetuner(finetune_config(files, tmp_path / "run", e0s="average", epochs=1))
    finetuner.run()
    potential, train = finetuner.potential, load_splits(finetuner.config)[0]
    expected = energy_correction(potential, potential.model, train, "average", batch_size=8)
    np.testing.assert_allclose(finetuner.energy_shift, expected, atol=1e-12, rtol=0)
    assert finetuner.config.training_options()["e0s"] == "average"


def test_average_is_refused_where_the_family_has_no_atomic_energies(files, mace):
    class WithoutAtomicEnergies(type(mace)):  # a family that does not implement Potential.atomic_energies
        family = "other"
        atomic_energies = Potential.atomic_energies

    other = WithoutAtomicEnergies(mace.model, "other-model")
    with pytest.raises(PeftEquiError, match=r"e0s 'average' replaces the model's per-element energies.*other"):
        energy_correction(other, other.model, read_dataset(files / "data.xyz", "energy", "forces"), "average", 8)
