"""MACE variants beyond the two reference architectures (tiny, random weights, H/C/O).

Plain ``MACE`` (no scale/shift), the density and density-residual interaction blocks,
``RealAgnosticResidualNonLinearInteractionBlock`` (a radial MLP of ``nn.Linear`` with
``LayerNorm`` and SiLU, an ``o3.Linear`` skip connection), two heads, ``l = 2`` hidden
irreps, ``AtomicDipolesMACE`` (an ``l = 1`` output), ``EnergyDipolesMACE`` and a MACE built
with mace's cuequivariance config (cuet layers on the naive CPU path: kept tiny).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mace_models import batch_of, molecules

from zoo.common import Outputs, ZooModel, energy_and_forces, energy_forces_rotated

HCO = [1, 6, 8]


def _common(**overrides: Any) -> dict[str, Any]:
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes
    options = dict(
        r_max=4.0,
        num_bessel=4,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=block["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=block["RealAgnosticInteractionBlock"],
        num_interactions=2,
        num_elements=len(HCO),
        hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("4x0e"),
        atomic_energies=np.array([-1.0, -3.0, -5.0]),
        avg_num_neighbors=6.0,
        atomic_numbers=HCO,
        correlation=2,
        gate=torch.nn.functional.silu,
        radial_MLP=[8, 8],
    )
    for key, value in overrides.items():
        if key.startswith("interaction_cls"):
            value = block[value]
        elif key.endswith("irreps"):
            value = o3.Irreps(value)
        options[key] = value
    return options


def _batch(heads: int = 1) -> dict[str, torch.Tensor]:
    batch = batch_of(molecules(2))
    if heads > 1:
        batch["head"] = torch.tensor([0, 1])
    return batch


def _builder(cls_name: str, heads: int = 1, **overrides: Any):
    def build() -> tuple[torch.nn.Module, Any]:
        from mace import modules

        torch.manual_seed(0)
        options = _common(**overrides)
        if cls_name == "AtomicDipolesMACE":
            options["atomic_energies"] = None
        if heads > 1:
            options["heads"] = [f"head{i}" for i in range(heads)]
            options["atomic_energies"] = np.stack([options["atomic_energies"]] * heads)
        return getattr(modules, cls_name)(**options), _batch(heads)

    return build


def _cueq() -> tuple[torch.nn.Module, Any]:
    from e3nn import o3
    from mace import modules
    from mace.modules.wrapper_ops import CuEquivarianceConfig

    torch.manual_seed(0)
    config = CuEquivarianceConfig(enabled=True, layout="ir_mul", group="O3_e3nn", optimize_all=True)
    options = _common(hidden_irreps=o3.Irreps("4x0e+4x1o"), max_ell=1, radial_MLP=[4], cueq_config=config)
    return modules.MACE(**options), _batch()


def _energy_forces(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Outputs:
    data = dict(batch)
    data["positions"] = batch["positions"].clone().requires_grad_(True)
    out = model(data, training=True, compute_force=False)
    return energy_and_forces(out["energy"], data["positions"])


def _dipoles(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Outputs:
    out = model(dict(batch), training=True, compute_force=False)
    return (out["dipole"].norm(dim=-1), out["dipole"])  # an invariant first (what training steps reduce)


def _energy_forces_dipoles(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Outputs:
    data = dict(batch)
    data["positions"] = batch["positions"].clone().requires_grad_(True)
    out = model(data, training=True, compute_force=False)
    return (*energy_and_forces(out["energy"], data["positions"]), out["dipole"])


def _rotate_batch(batch: dict[str, torch.Tensor], rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**batch, "positions": batch["positions"] @ rotation.t()}


def _mace(name: str, build, outputs=_energy_forces, **kwargs: Any) -> ZooModel:
    return ZooModel(name, build, outputs, _rotate_batch, energy_forces_rotated, needs="mace", **kwargs)


MODELS = [
    _mace("mace.MACE", _builder("MACE")),
    _mace(
        "mace.MACE density blocks",
        _builder(
            "MACE",
            interaction_cls_first="RealAgnosticDensityInteractionBlock",
            interaction_cls="RealAgnosticDensityResidualInteractionBlock",
        ),
    ),
    _mace(
        "mace.MACE nonlinear blocks (nn.Linear radial MLP)",
        _builder(
            "MACE",
            interaction_cls_first="RealAgnosticResidualNonLinearInteractionBlock",
            interaction_cls="RealAgnosticResidualNonLinearInteractionBlock",
        ),
    ),
    _mace("mace.MACE two heads", _builder("MACE", heads=2)),
    _mace("mace.MACE l=2 hidden", _builder("MACE", hidden_irreps="4x0e+4x1o+4x2e")),
    _mace("mace.AtomicDipolesMACE", _builder("AtomicDipolesMACE"), _dipoles),
    _mace(
        "mace.EnergyDipolesMACE",
        _builder("EnergyDipolesMACE"),
        _energy_forces_dipoles,
    ),
    _mace("mace.MACE cueq config", _cueq),
]
