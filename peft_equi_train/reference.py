r"""Per-element reference energies: the correction added to a foundation model's energies.

Foundation models were trained on another level of theory: their energies differ from the
new data's by roughly a constant per atom of each element.  The engine adds ``delta_z`` per
atom of element ``z`` to the model's energy (fixed during training):

* ``'fit'``: least squares of the training **residuals** on composition,
  :math:`E^{ref}_s - E^{model}_s \approx \sum_z n_{sz} \delta_z` (mace's ``--E0s=estimated``);
  the foundation's interaction energy is kept, so the model starts near the data.
* ``'average'``: mace's ``--E0s=average``, which the MMEA and ELoRA papers use: least squares
  of the **raw** training energies on composition, :math:`E^{ref}_s \approx \sum_z n_{sz} E^0_z`
  (mace's ``compute_average_E0s``; minimum-norm for one composition), **replacing** the model's
  own per-element energies: :math:`\delta_z = E^0_z - E^{model}_{0,z}`.  The model then starts
  off by its whole interaction energy, an offset training has to remove.
* an isolated-atoms file: :math:`\delta_z = E^{file}_0(z) - E^{model}(\text{single atom } z)`.
* ``'none'``: no correction.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from peft_equi.families.base import Potential
from peft_equi_train.data import LabelledStructures, fit_reference_energies, read_isolated_atom_energies
from peft_equi_train.evaluation import predict
from peft_equi_train.loader import Collate, prepare


def energy_correction(
    potential: Potential,
    model: nn.Module,
    train: LabelledStructures,
    mode: str,
    batch_size: int,
    collate: Collate | None = None,
) -> np.ndarray:
    """``delta_z`` per element of ``potential`` (in its order); ``mode``: 'fit', 'average', 'none' or an
    isolated-atoms file (see the module docstring).

    Elements of the model that the training data lack keep the model's energies (``delta_z = 0``).
    """
    elements = potential.atomic_numbers
    if mode == "none":
        return np.zeros(len(elements))
    if mode == "fit":
        predicted, _ = predict(potential, model, prepare(potential, train), batch_size, collate)
        fitted = fit_reference_energies(train, train.energies - predicted)
        return np.array([fitted.get(z, 0.0) for z in elements])
    if mode == "average":
        own = potential.atomic_energies()  # refuses for families without per-element energies
        average = fit_reference_energies(train)
        return np.array([average[z] - e0 if z in average else 0.0 for z, e0 in zip(elements, own)])
    isolated = read_isolated_atom_energies(mode)  # covers the training data's elements (checked on reading)
    from ase import Atoms

    atoms = [Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in elements if z in isolated]
    single = LabelledStructures(atoms, np.zeros(len(atoms)), [np.zeros((1, 3))] * len(atoms))
    energies, _ = predict(potential, model, prepare(potential, single), batch_size, collate)
    model_e0 = dict(zip([int(a.numbers[0]) for a in atoms], energies))
    return np.array([isolated[z] - model_e0[z] if z in isolated else 0.0 for z in elements])
