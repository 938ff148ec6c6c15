"""Forgetting, measured: errors on structures of the foundation's domain against the foundation's labels.

The ``retain`` files of a :class:`~peft_equi.training.config.FinetuneConfig` hold structures the
foundation model handled before fine-tuning (held-out pretraining structures, other molecules,
a crystal, ...).  The engine evaluates the model on each of them before fine-tuning, every
``retain_every`` epochs (with the validation weights: EMA-averaged when EMA is on) and after,
and reports the energy and force errors next to the validation metrics (``metrics.csv``
columns ``retain_<file stem>_*``, the before/after table, the learning-curve plot).

Labels (``retain_labels``):

- ``"foundation"``: pseudo-labels, the frozen foundation model's own energies and forces,
  computed once before any adapter is attached.  Works for any foundation model, with or
  without its training data; the error before fine-tuning is zero (to rounding), and the
  error after it is the drift from the foundation.
- ``"file"``: the energies and forces in the files (for data at the foundation's own level of
  theory, e.g. its held-out pretraining structures).

The model's energies are compared *without* the per-element energy correction fitted to the
fine-tuning data (that correction maps the foundation onto the new level of theory), so the
numbers say how far the model moved from the foundation on the retain structures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from peft_equi.errors import DataError, one_line
from peft_equi.families.base import Potential
from peft_equi.training.config import FinetuneConfig
from peft_equi.training.data import Dataset, read_dataset
from peft_equi.training.evaluation import predict
from peft_equi.training.loader import Collate, GraphDataset, prepare

PREFIX = "retain_"


def retain_name(path: str | Path) -> str:
    """The split name of a retain file: ``retain_<file stem>``."""
    return f"{PREFIX}{Path(path).name.split('.')[0]}"


def check_retain_files(config: FinetuneConfig) -> None:
    """Each retain file exists and names a distinct split (checked before any model is loaded)."""
    names: dict[str, Path] = {}
    for path in config.retain:
        if not Path(path).is_file():
            raise DataError(f"{path}: retain file not found")
        name = retain_name(path)
        if name in names:
            raise DataError(f"retain files {names[name]} and {path} would both be reported as {name}: rename one")
        names[name] = Path(path)


def read_structures(path: str | Path) -> list:
    """The structures of an extxyz (any ASE-readable) or rMD17 ``.npz`` file, labels or not."""
    if Path(path).suffix == ".npz":
        return read_dataset(path).atoms
    from ase.io import read

    try:
        return list(read(str(path), index=":"))
    except Exception as exc:
        raise DataError(f"{path}: cannot read structures ({one_line(exc)})") from None


def pseudo_labelled(
    potential: Potential, model: nn.Module, atoms: list, batch_size: int, collate: Collate | None = None
) -> Dataset:
    """``atoms`` labelled with ``model``'s own energies and forces (eV, eV/A)."""
    blank = Dataset(atoms, np.zeros(len(atoms)), [np.zeros((len(a), 3)) for a in atoms])
    energies, forces = predict(potential, model, prepare(potential, blank), batch_size, collate)
    return Dataset(atoms, energies, np.split(forces, np.cumsum([len(a) for a in atoms])[:-1]))


def retain_sets(
    config: FinetuneConfig, potential: Potential, foundation: nn.Module, collate: Collate | None = None
) -> dict[str, GraphDataset]:
    """The retain splits, by name, prepared without an energy correction (``foundation``: the model before adapters)."""
    sets = {}
    for path in config.retain:
        labelled = read_dataset(path, config.energy_key, config.forces_key) if config.retain_labels == "file" else None
        atoms = labelled.atoms if labelled is not None else read_structures(path)
        potential.check_elements(sorted({int(z) for a in atoms for z in a.numbers}), f"the retain file {path}")
        data = labelled or pseudo_labelled(potential, foundation, atoms, config.eval_batch_size, collate)
        sets[retain_name(path)] = prepare(potential, data)
    return sets
