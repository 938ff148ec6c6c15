"""schnetpack's PaiNN and SO3net (tiny, random weights, float64).

schnetpack 2.1 imports ``T_co`` from ``torch.utils.data.dataloader``, which torch 2.13 no
longer defines: :func:`import_schnetpack` puts a covariant ``TypeVar`` there first (the
shim; it changes nothing else).  Both models apply ``Dense`` / ``nn.Linear`` to vector and
higher-order features as well as to scalars (PaiNN's ``mu_channel_mix`` on ``(atoms, 3,
channels)``, SO3net's ``mixings`` on ``(atoms, (l_max + 1)^2, channels)``): weight-space
adapters act on every layer, the others only where the input is proven invariant (the
``Dense`` layers of the MLPs, next to their SiLU).
"""

from __future__ import annotations

import typing
from typing import Any

import torch

from zoo.common import Outputs, ZooModel, energy_and_forces, energy_forces_rotated, molecule_positions

CUTOFF = 4.0


def import_schnetpack() -> Any:
    """``import schnetpack``, with the shim for torch 2.13 (see the module docstring)."""
    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):
        dataloader.T_co = typing.TypeVar("T_co", covariant=True)
    import schnetpack

    return schnetpack


def _inputs() -> dict[str, torch.Tensor]:
    from ase import Atoms

    spk = import_schnetpack()
    numbers, positions = molecule_positions()
    atoms = Atoms(numbers=numbers.numpy(), positions=positions.numpy())
    converter = spk.interfaces.AtomsConverter(
        neighbor_list=spk.transform.ASENeighborList(cutoff=CUTOFF), dtype=torch.float64
    )
    return converter(atoms)


def _potential(representation: torch.nn.Module, width: int) -> torch.nn.Module:
    spk = import_schnetpack()
    return spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=width, output_key="energy")],
    ).double()  # schnetpack builds some buffers with torch.FloatTensor: build in float32, then cast


def _painn() -> tuple[torch.nn.Module, Any]:
    spk = import_schnetpack()
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float32)
        rep = spk.representation.PaiNN(
            n_atom_basis=8,
            n_interactions=2,
            radial_basis=spk.nn.GaussianRBF(n_rbf=6, cutoff=CUTOFF),
            cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
        )
        model = _potential(rep, 8)
    torch.set_default_dtype(torch.float64)
    return model, _inputs()


def _so3net() -> tuple[torch.nn.Module, Any]:
    spk = import_schnetpack()
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.set_default_dtype(torch.float32)
        rep = spk.representation.SO3net(
            n_atom_basis=8,
            n_interactions=2,
            lmax=2,
            radial_basis=spk.nn.GaussianRBF(n_rbf=6, cutoff=CUTOFF),
            cutoff_fn=spk.nn.CosineCutoff(CUTOFF),
        )
        model = _potential(rep, 8)
    torch.set_default_dtype(torch.float64)
    return model, _inputs()


def _energy_forces(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Outputs:
    data = {k: v.clone() for k, v in inputs.items()}
    data["_positions"].requires_grad_(True)
    return energy_and_forces(model(data)["energy"], data["_positions"])


def _rotate(inputs: dict[str, torch.Tensor], rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**inputs, "_positions": inputs["_positions"] @ rotation.t()}


def _schnetpack(name: str, build, **kwargs: Any) -> ZooModel:
    return ZooModel(name, build, _energy_forces, _rotate, energy_forces_rotated, needs="schnetpack", **kwargs)


MODELS = [
    _schnetpack("schnetpack.PaiNN", _painn),
    # SO3net's own error is ~1e-9 in float64 (its Clebsch-Gordan buffers are built in float32)
    _schnetpack("schnetpack.SO3net", _so3net, atol=1e-8),
]
