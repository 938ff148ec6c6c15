"""Per-element reference energies: the correction added to a foundation model's energies.

Foundation models were trained on another level of theory: their energies differ from the
new data's by roughly a constant per atom of each element.  The engine adds ``delta_z`` per
atom of element ``z`` to the model's energy (fixed during training), either fitted by least
squares on the training residuals (``e0s='fit'``) or from isolated-atom energies (a file).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from peft_equi.families.base import Potential
from peft_equi.training.data import Dataset, fit_reference_energies, read_isolated_atom_energies
from peft_equi.training.evaluation import predict
from peft_equi.training.loader import Collate, prepare


def energy_correction(
    potential: Potential, model: nn.Module, train: Dataset, mode: str, batch_size: int, collate: Collate | None = None
) -> np.ndarray:
    """``delta_z`` per element of ``potential`` (in its order); ``mode``: 'fit', 'none' or an isolated-atoms file."""
    elements = potential.atomic_numbers
    if mode == "none":
        return np.zeros(len(elements))
    if mode == "fit":
        predicted, _ = predict(potential, model, prepare(potential, train), batch_size, collate)
        fitted = fit_reference_energies(train, train.energies - predicted)
        return np.array([fitted.get(z, 0.0) for z in elements])
    isolated = read_isolated_atom_energies(mode)  # covers the training data's elements (checked on reading)
    from ase import Atoms

    atoms = [Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in elements if z in isolated]
    single = Dataset(atoms, np.zeros(len(atoms)), [np.zeros((1, 3))] * len(atoms))
    energies, _ = predict(potential, model, prepare(potential, single), batch_size, collate)
    model_e0 = dict(zip([int(a.numbers[0]) for a in atoms], energies))
    return np.array([isolated[z] - model_e0[z] if z in isolated else 0.0 for z in elements])
