"""Batches for the engine: prepared structures in a torch ``DataLoader``.

A :class:`GraphDataset` set holds a :class:`~peft_equi_train.data.LabelledStructures` with the model
inputs (neighbour lists, computed once) and each structure's energy correction.  Evaluation
reads it in order (:func:`eval_loader`); training (:func:`train_loader`) draws a new order
every epoch with :class:`ShuffledShares`, which has the semantics of torch's
``DistributedSampler``: one seeded permutation per epoch shared by all processes, cut to
whole batches, process ``r`` of ``w`` taking every ``w``-th index.  So the ``w`` shares of
batch ``b`` together are exactly batch ``b`` of one process, and data-parallel runs follow
the single-process trajectory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from peft_equi.errors import PeftEquiError
from peft_equi.families.base import Potential
from peft_equi_train.data import LabelledStructures, composition_matrix


@dataclass
class GraphDataset(torch.utils.data.Dataset):
    """A dataset turned into model inputs, with the per-structure energy correction."""

    data: LabelledStructures
    graphs: list[Any]
    shifts: np.ndarray  # sum_z n_z delta_z per structure (eV)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Any, float, np.ndarray, float, int]:
        """One structure: ``(graph, energy, forces, shift, n_atoms)``."""
        return self.graphs[i], self.data.energies[i], self.data.forces[i], self.shifts[i], len(self.data.atoms[i])


def prepare(potential: Potential, data: LabelledStructures, energy_shift: np.ndarray | None = None) -> GraphDataset:
    """Model inputs for ``data`` with the per-element ``energy_shift`` (eV, in ``potential``'s order; default 0)."""
    elements = potential.atomic_numbers
    energy_shift = np.zeros(len(elements)) if energy_shift is None else np.asarray(energy_shift)
    return GraphDataset(data, potential.graphs(data.atoms), composition_matrix(data, elements) @ energy_shift)


@dataclass
class Batch:
    """Model inputs and references of some structures, on the engine's device and dtype."""

    inputs: Any
    energy: torch.Tensor
    forces: torch.Tensor
    shift: torch.Tensor
    n_atoms: torch.Tensor


class Collate:
    """``collate_fn``: items of a :class:`GraphDataset` set to a :class:`Batch` (the family batches the graphs)."""

    def __init__(self, potential: Potential, device: torch.device, dtype: torch.dtype) -> None:
        self.potential, self.device, self.dtype = potential, device, dtype

    def __call__(self, items: Sequence[tuple[Any, ...]]) -> Batch:
        graphs, energies, forces, shifts, n_atoms = zip(*items)
        tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)  # noqa: E731
        return Batch(
            self.potential.collate(list(graphs), self.device, self.dtype),
            tensor(energies),
            tensor(np.concatenate(forces)),
            tensor(shifts),
            tensor(n_atoms),
        )


class ShuffledShares(Sampler[int]):
    """This process's share of each epoch's shuffled batches (``DistributedSampler`` semantics, numpy's order).

    The epoch is set with :meth:`use_epoch`, deliberately not ``set_epoch``: Fabric's loader
    wrapper would otherwise overwrite it with its own count of passes, which restarts at 0
    when a run resumes.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise PeftEquiError(f"batch_size {batch_size} is not divisible by {world} processes")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` (0-based) on the next pass."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng(self.seed + 1000 * (self.epoch + 1)).permutation(self.n)
        whole = order[: len(self) * self.world]  # drop the incomplete last batch
        return iter(whole[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return (self.n // self.batch_size) * self.batch_size // self.world


def train_loader(
    prepared: GraphDataset, collate: Collate, batch_size: int, seed: int, rank: int = 0, world: int = 1
) -> DataLoader:
    """Shuffled whole batches of ``batch_size`` structures over all processes (this process's share of each)."""
    sampler = ShuffledShares(len(prepared), batch_size, seed, rank, world)
    return DataLoader(prepared, batch_size=batch_size // world, sampler=sampler, collate_fn=collate)


def eval_loader(prepared: GraphDataset, collate: Collate, batch_size: int) -> DataLoader:
    """Every structure, in order, ``batch_size`` at a time."""
    return DataLoader(prepared, batch_size=batch_size, shuffle=False, collate_fn=collate)
