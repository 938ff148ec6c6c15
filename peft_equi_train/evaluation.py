"""Errors and losses of a model on labelled structures (``peft-equi evaluate`` calls :func:`evaluate`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from peft_equi.families.base import Potential
from peft_equi_train.data import LabelledStructures
from peft_equi_train.loader import Batch, Collate, GraphDataset, eval_loader, prepare
from peft_equi_train.metrics import ErrorMetrics, weighted_loss


def _collate(potential: Potential, model: nn.Module) -> Collate:
    """Batches on the device and in the floating dtype of ``model``'s parameters."""
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is None:
        return Collate(potential, torch.device("cpu"), torch.get_default_dtype())
    return Collate(potential, parameter.device, parameter.dtype)


def _passes(
    potential: Potential, model: nn.Module, prepared: GraphDataset, batch_size: int, collate: Collate | None
) -> Iterator[tuple[Batch, torch.Tensor, torch.Tensor]]:
    """``(batch, energies with the energy correction, forces)`` of ``model`` over ``prepared``, in order."""
    for batch in eval_loader(prepared, collate or _collate(potential, model), batch_size):
        energy, force = potential.energy_forces(model, batch.inputs, training=False)
        yield batch, (energy + batch.shift).detach(), force.detach()


def predict(
    potential: Potential, model: nn.Module, prepared: GraphDataset, batch_size: int, collate: Collate | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``model``'s energies (with the energy correction) and forces on every structure of ``prepared``, in order."""
    passes = list(_passes(potential, model, prepared, batch_size, collate))
    energies = np.concatenate([e.cpu().numpy() for _, e, _ in passes])
    return energies, np.concatenate([f.cpu().numpy() for *_, f in passes])


def evaluate(
    potential: Potential,
    model: nn.Module,
    data: LabelledStructures | GraphDataset,
    *,
    energy_shift: np.ndarray | None = None,
    batch_size: int = 10,
    collate: Collate | None = None,
) -> ErrorMetrics:
    """Energy and force errors of ``model`` (a module of ``potential``'s family) on ``data``.

    ``energy_shift``: per-element energy correction (eV, in the order of ``potential.atomic_numbers``)
    added to the model's energies; for a :class:`GraphDataset` set it was applied when preparing.
    """
    prepared = data if isinstance(data, GraphDataset) else prepare(potential, data, energy_shift)
    energies, forces = predict(potential, model, prepared, batch_size, collate)
    return ErrorMetrics.of(energies, prepared.data.energies, forces, np.concatenate(prepared.data.forces))


def batch_loss(
    potential: Potential,
    model: nn.Module,
    batch: Batch,
    weights: tuple[float, float],
    energy_loss: str,
    training: bool,
    totals: tuple[int, int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted energy-forces loss of ``model`` on ``batch`` (:func:`~peft_equi_train.metrics.weighted_loss`)."""
    energy, forces = potential.energy_forces(model, batch.inputs, training=training)
    return weighted_loss(
        energy + batch.shift, forces, batch.energy, batch.forces, batch.n_atoms, *weights, totals, energy_loss
    )


def validate(
    potential: Potential,
    model: nn.Module,
    prepared: GraphDataset,
    weights: tuple[float, float],
    energy_loss: str,
    batch_size: int,
    collate: Collate | None = None,
) -> tuple[float, ErrorMetrics]:
    """One pass over ``prepared``: the mean loss over its batches (``weights``, ``energy_loss``) and the errors."""
    losses, energies, forces = [], [], []
    for batch, energy, force in _passes(potential, model, prepared, batch_size, collate):
        loss = weighted_loss(energy, force, batch.energy, batch.forces, batch.n_atoms, *weights, None, energy_loss)
        losses.append(loss.item())
        energies.append(energy.cpu().numpy())
        forces.append(force.cpu().numpy())
    errors = ErrorMetrics.of(
        np.concatenate(energies), prepared.data.energies, np.concatenate(forces), np.concatenate(prepared.data.forces)
    )
    return float(np.mean(losses)), errors
