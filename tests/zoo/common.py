"""What every zoo model gives the tests: how to build it, call it and check its outputs for equivariance.

A :class:`ZooModel` builds ``(model, inputs)`` in float64 and says how to read its outputs
(``outputs(model, inputs)``: a tuple of tensors) and how they transform
(``transform(outputs, rotation)``, with ``inputs_rotated(inputs, rotation)`` for the inputs),
so that one check covers potentials (energy invariant, forces equivariant), networks with
irreps outputs and dipoles.  ``needs``: the package it imports (the case is skipped, with the
reason, where it is missing).  ``atol``: the equivariance tolerance (float64; the model's own
error where that is larger than rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from peft_equi.testing import e3nn_rep

Outputs = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ZooModel:
    """One third-party model of the zoo (see the module docstring)."""

    name: str
    build: Callable[[], tuple[torch.nn.Module, Any]]
    outputs: Callable[[torch.nn.Module, Any], Outputs]
    rotate_inputs: Callable[[Any, torch.Tensor], Any]
    rotate_outputs: Callable[[Outputs, torch.Tensor], Outputs]
    needs: str = "e3nn"
    inversion: bool = True
    atol: float = 1e-9
    #: options every adapter of this model gets (``invariant_inputs`` a user of the model would declare)
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


def energy_forces_rotated(out: Outputs, rotation: torch.Tensor) -> Outputs:
    """Energy invariant, forces (and any further ``(..., 3)`` vector output) rotated."""
    energy, *vectors = out
    return (energy, *(v @ rotation.t() for v in vectors))


def irreps_rotated(irreps: str) -> Callable[[Outputs, torch.Tensor], Outputs]:
    """Outputs that are flat features of ``irreps`` (``mul_ir``)."""

    def rotate(out: Outputs, rotation: torch.Tensor) -> Outputs:
        d = e3nn_rep(irreps, rotation).to(out[0].dtype)
        return (out[0] @ d.t(),)

    return rotate


def energy_and_forces(energy: torch.Tensor, positions: torch.Tensor) -> Outputs:
    """``(energy, -dE/dx)``; the energy's graph is kept (training steps back-propagate the energy)."""
    (grad,) = torch.autograd.grad(energy.sum(), positions, retain_graph=True)
    return energy, -grad


def molecule_positions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ethanol, perturbed: atomic numbers and float64 positions (Angstrom)."""
    from ase.build import molecule

    atoms = molecule("CH3CH2OH")
    generator = torch.Generator().manual_seed(seed)
    positions = torch.tensor(atoms.positions, dtype=torch.float64)
    positions = positions + 0.05 * torch.randn(positions.shape, generator=generator, dtype=torch.float64)
    return torch.tensor(atoms.numbers), positions
