"""Structures labelled for the foundation: retain sets measure forgetting, replay sets prevent it.

**Retain** (``retain`` files of a :class:`~peft_equi_train.config.FinetuneConfig`):
structures the foundation model handled before fine-tuning (held-out pretraining structures,
other molecules, ...).  The engine evaluates the model on each before fine-tuning, every
``retain_every`` epochs (with the validation weights: EMA-averaged when EMA is on) and after,
and reports the errors next to the validation metrics (``metrics.csv`` columns
``retain_<file stem>_*``, the before/after table, the learning-curve plot).

**Replay** (``replay`` files): structures mixed into every training batch,
``replay_ratio`` of them per training structure, their loss weighted by ``replay_weight``, so
that the model keeps the foundation's behaviour on them (arXiv 2606.12704 finds replay the
one fine-tuning practice that keeps out-of-distribution behaviour).

Labels (``retain_labels`` / ``replay_labels``):

- ``"foundation"``: pseudo-labels, the frozen foundation model's own energies and forces,
  computed once before any adapter is attached.  Works for any foundation model, with or
  without its training data (no multi-head model needed); retain errors before fine-tuning
  are zero (to rounding).
- ``"file"``: the energies and forces in the files (data at the foundation's own level of
  theory, e.g. its held-out pretraining structures).

The model's energies are compared *without* the per-element energy correction fitted to the
fine-tuning data (that correction maps the foundation onto the new level of theory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from peft_equi.errors import DataError, one_line
from peft_equi.families.base import Potential
from peft_equi_train.config import FinetuneConfig
from peft_equi_train.data import LabelledStructures, read_dataset
from peft_equi_train.evaluation import predict
from peft_equi_train.loader import Collate, GraphDataset, prepare

PREFIX = "retain_"


def retain_name(path: str | Path) -> str:
    """The split name of a retain file: ``retain_<file stem>``."""
    return f"{PREFIX}{Path(path).name.split('.')[0]}"


def check_files(config: FinetuneConfig) -> None:
    """Each retain and replay file exists; retain files name distinct splits (checked before any model is loaded)."""
    for path in config.replay:
        if not Path(path).is_file():
            raise DataError(f"{path}: replay file not found")
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
        atoms = list(read(str(path), index=":"))
    except Exception as exc:  # any reader error is a problem of this file
        raise DataError(f"{path}: cannot read structures ({one_line(exc)})") from None
    if not atoms:
        raise DataError(f"{path}: no structures")
    return atoms


def pseudo_labelled(
    potential: Potential, model: nn.Module, atoms: list, batch_size: int, collate: Collate | None = None
) -> LabelledStructures:
    """``atoms`` labelled with ``model``'s own energies and forces (eV, eV/A)."""
    blank = LabelledStructures(atoms, np.zeros(len(atoms)), [np.zeros((len(a), 3)) for a in atoms])
    energies, forces = predict(potential, model, prepare(potential, blank), batch_size, collate)
    return LabelledStructures(atoms, energies, np.split(forces, np.cumsum([len(a) for a in atoms])[:-1]))


def labelled(
    config: FinetuneConfig,
    path: Path,
    labels: str,
    potential: Potential,
    foundation: nn.Module,
    collate: Collate | None = None,
) -> LabelledStructures:
    """The structures of ``path`` with the foundation's ``labels`` ('foundation' or 'file');
    ``foundation`` is the model before adapters."""
    data = read_dataset(path, config.energy_key, config.forces_key) if labels == "file" else None
    atoms = data.atoms if data is not None else read_structures(path)
    potential.check_elements(_elements(atoms), f"the {path}")
    if data is not None:
        return data
    return pseudo_labelled(potential, foundation, atoms, config.eval_batch_size, collate)


def _elements(atoms: list) -> list[int]:
    return sorted({int(z) for a in atoms for z in a.numbers})


def foundation_elements(config: FinetuneConfig) -> list[int]:
    """The elements of the retain and replay files (the model keeps them when it is cut to the data's)."""
    return sorted({z for path in [*config.retain, *config.replay] for z in _elements(read_structures(path))})


def retain_sets(
    config: FinetuneConfig, potential: Potential, foundation: nn.Module, collate: Collate | None = None
) -> dict[str, GraphDataset]:
    """The retain splits by name, prepared without an energy correction."""
    return {
        retain_name(path): prepare(
            potential, labelled(config, path, config.retain_labels, potential, foundation, collate)
        )
        for path in config.retain
    }


def replay_set(
    config: FinetuneConfig, potential: Potential, foundation: nn.Module, collate: Collate | None = None
) -> GraphDataset | None:
    """All replay structures in one set, with ``replay_labels``; ``None`` without replay (or ``replay_ratio`` 0)."""
    if not config.replay or config.replay_batch_size() == 0:
        return None
    parts = [labelled(config, path, config.replay_labels, potential, foundation, collate) for path in config.replay]
    data = LabelledStructures(
        [a for p in parts for a in p.atoms],
        np.concatenate([p.energies for p in parts]),
        [f for p in parts for f in p.forces],
    )
    if len(data) < config.replay_batch_size():
        raise DataError(f"{len(data)} replay structures: fewer than one replay batch ({config.replay_batch_size()})")
    return prepare(potential, data)
