"""MACE (mace-torch) as a :class:`~peft_equi.families.base.Potential`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_equi.errors import EnergyShiftError, PeftEquiError
from peft_equi.families.base import Potential, register_potential
from peft_equi.utils.dtype import torch_default_dtype


def mace_graphs(atoms: Sequence, atomic_numbers: Sequence[int], r_max: float) -> list[Any]:
    """MACE ``AtomicData`` for each structure (``atomic_numbers``: the model's element order).

    Built in float64 whatever torch's default dtype (mace builds them in it): positions, cell
    shifts and labels keep every digit; batches are cast to the run's dtype.
    """
    from mace import data
    from mace.tools import utils

    table = utils.AtomicNumberTable([int(z) for z in atomic_numbers])
    with torch_default_dtype(torch.float64):
        return [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=r_max) for a in atoms]


def mace_batch(atoms: Sequence, atomic_numbers: Sequence[int], r_max: float) -> dict[str, torch.Tensor]:
    """The input dict MACE models take, for ``atoms`` (floating tensors in float64: :func:`mace_graphs`)."""
    from mace.tools.torch_geometric.batch import Batch

    return Batch.from_data_list(mace_graphs(atoms, atomic_numbers, r_max)).to_dict()


def _cast(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    return {
        k: (v.to(device=device, dtype=dtype) if torch.is_floating_point(v) else v.to(device))
        if isinstance(v, torch.Tensor)
        else v
        for k, v in batch.items()
    }


class MacePotential(Potential):
    """A MACE model (``ScaleShiftMACE`` etc.): forward ``model(batch, training, compute_force=True)``."""

    family = "mace"
    suffix = ".model"

    @property
    def atomic_numbers(self) -> list[int]:
        return [int(z) for z in self.model.atomic_numbers]

    @property
    def r_max(self) -> float:
        return float(self.model.r_max)

    def atomic_energies(self) -> np.ndarray:
        """MACE's ``atomic_energies_fn.atomic_energies`` (one head; a multi-head model is refused)."""
        energies = self.model.atomic_energies_fn.atomic_energies.detach().cpu().double().numpy()
        if energies.ndim == 2 and energies.shape[0] == 1:
            energies = energies[0]
        if energies.ndim != 1:
            raise PeftEquiError(
                f"{self.name} has per-element energies for {energies.shape[0]} heads; e0s 'average' needs one head"
            )
        return energies

    def graphs(self, atoms: Sequence) -> list[Any]:
        return mace_graphs(atoms, self.atomic_numbers, self.r_max)

    def collate(self, graphs: Sequence[Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        from mace.tools.torch_geometric.batch import Batch

        return _cast(Batch.from_data_list(list(graphs)).to_dict(), device, dtype)

    def energy_forces(self, model: nn.Module, batch: dict[str, Any], training: bool):
        out = model(dict(batch), training=training, compute_force=True)
        return out["energy"], out["forces"]

    def subset_elements(self, atomic_numbers: Sequence[int]) -> bool:
        """Cut the model to ``atomic_numbers`` (:func:`peft_equi.families.mace.subset_elements`)."""
        from peft_equi.families.mace.subset import subset_elements

        self.model = subset_elements(self.model, atomic_numbers)
        return True

    def add_per_element_energies(self, model: nn.Module, delta: np.ndarray) -> None:
        """Add ``delta`` to MACE's atomic energies (``atomic_energies_fn.atomic_energies``; every head's)."""
        blocks = [m for m in model.modules() if isinstance(getattr(m, "atomic_energies", None), torch.Tensor)]
        if len(blocks) != 1:
            raise EnergyShiftError(
                f"cannot fold the energy correction into this MACE model: {len(blocks)} atomic-energy blocks "
                "(atomic_energies_fn) found, 1 expected"
            )
        energies = blocks[0].atomic_energies
        if energies.shape[-1] != len(delta):
            raise EnergyShiftError(
                f"the model's atomic energies cover {energies.shape[-1]} elements, the correction {len(delta)}"
            )
        with torch.no_grad():
            energies += torch.as_tensor(delta, dtype=energies.dtype, device=energies.device)

    def to_cueq(self, device: str) -> str:
        from peft_equi.families.mace.cueq import kernel_report, to_cueq

        self.model = to_cueq(self.model, layout="ir_mul", device=device)
        return kernel_report(device)

    def save(self, model: nn.Module, path: Path) -> Path:
        path = self.saved_path(path)
        torch.save(model, path)
        return path


def _is_mace_file(source: str) -> bool:
    path = Path(source)
    return path.suffix in (".model", ".pt") and path.is_file()


@register_potential("mace", _is_mace_file)
def load_mace(source: str, *, dtype: torch.dtype, trust_pickle: bool) -> MacePotential:
    """A MACE ``.model`` file (e3nn 0.4.4 or 0.6 pickle: needs ``trust_pickle``) or a MACE state file."""
    from peft_equi.families.mace.loading import load_mace_model

    return MacePotential(load_mace_model(source, trust_pickle=trust_pickle, dtype=dtype), Path(source).name)
