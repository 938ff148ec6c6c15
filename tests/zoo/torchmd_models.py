"""torchmd-net's equivariant transformer and TensorNet (tiny, random weights, float64).

torchmd-net 3.1 computes neighbour lists (and TensorNet's tensor ops) with NVIDIA Warp
kernels, compiled on the CPU at first use (seconds; cached in ``~/.cache/warp``).  Both
models apply ``nn.Linear`` to vectors or ``(atoms, 3, 3, channels)`` tensors as well as to
scalars: weight-space adapters act on every layer, the others only where the input is
proven invariant (``nn.Sequential`` MLPs next to their SiLU).
"""

from __future__ import annotations

from typing import Any

import torch

from zoo.common import Outputs, ZooModel, energy_and_forces, energy_forces_rotated, molecule_positions

OPTIONS = dict(
    embedding_dimension=8,
    num_layers=2,
    num_rbf=6,
    rbf_type="expnorm",
    trainable_rbf=False,
    activation="silu",
    cutoff_lower=0.0,
    cutoff_upper=4.0,
    max_z=10,
    max_num_neighbors=32,
    reduce_op="add",
    derivative=False,
    atom_filter=-1,
    prior_model=None,
    output_model="Scalar",
    precision=64,
    attn_activation="silu",
    num_heads=2,
    distance_influence="both",
    neighbor_embedding=True,
    aggr="add",
    equivariance_invariance_group="O(3)",
    box_vecs=None,
    check_errors=True,
    static_shapes=False,
    vector_cutoff=False,
    charge=False,
    spin=False,
)


def _builder(name: str):
    def build() -> tuple[torch.nn.Module, Any]:
        from torchmdnet.models.model import create_model

        torch.manual_seed(0)
        model = create_model(dict(OPTIONS, model=name))
        numbers, positions = molecule_positions()
        return model, (numbers, positions)

    return build


def _energy_forces(model: torch.nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> Outputs:
    numbers, positions = inputs
    positions = positions.clone().requires_grad_(True)
    energy, _ = model(numbers, positions, batch=torch.zeros(len(numbers), dtype=torch.long))
    return energy_and_forces(energy, positions)


def _rotate(inputs: tuple[torch.Tensor, torch.Tensor], rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return inputs[0], inputs[1] @ rotation.t()


def _torchmd(name: str, model: str) -> ZooModel:
    return ZooModel(name, _builder(model), _energy_forces, _rotate, energy_forces_rotated, needs="torchmdnet")


MODELS = [
    _torchmd("torchmd-net equivariant transformer", "equivariant-transformer"),
    _torchmd("torchmd-net TensorNet", "tensornet"),
]
