"""Loss and error metrics: energy per structure (meV), forces per component (meV/A)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def weighted_loss(
    energy: torch.Tensor,
    forces: torch.Tensor,
    ref_energy: torch.Tensor,
    ref_forces: torch.Tensor,
    n_atoms: torch.Tensor,
    energy_weight: float,
    forces_weight: float,
    totals: tuple[int, int] | None = None,
    energy_loss: str = "total",
) -> torch.Tensor:
    """The energy-forces loss, with the energy error on the total or the per-atom energy.

    ``energy_loss='total'`` (the MMEA/ELoRA papers' ``--loss=ef``, mace's ``EnergyForcesLoss``):

    .. math::
        L = w_E \\, \\mathrm{mean}_s (E_s - E^{ref}_s)^2
          + w_F \\, \\mathrm{mean}_{i,\\alpha} (F_{i\\alpha} - F^{ref}_{i\\alpha})^2

    ``energy_loss='per_atom'`` (mace's default ``weighted``, ``WeightedEnergyForcesLoss``) divides each
    energy error by the structure's atom count ``N_s`` first: the same ``w_E`` then weighs energies
    ``N_s^2`` times less (441 times for aspirin).

    ``totals = (structures, atoms)`` of the whole batch when this call sees only a share of
    it (data parallelism): the sums are divided by the batch totals instead, so that the
    shares' losses add up to the loss of the whole batch.
    """
    n_structures, n_total_atoms = totals if totals is not None else (len(energy), len(forces))
    energy_error = energy - ref_energy
    if energy_loss == "per_atom":
        energy_error = energy_error / n_atoms
    elif energy_loss != "total":
        raise ValueError(f"energy_loss must be 'total' or 'per_atom', got {energy_loss!r}")
    energy_term = (energy_error**2).sum() / n_structures
    forces_term = ((forces - ref_forces) ** 2).sum() / (3 * n_total_atoms)
    return energy_weight * energy_term + forces_weight * forces_term


@dataclass
class ErrorMetrics:
    """Errors of predictions against references, and the values themselves (for parity plots)."""

    energy_mae: float  # meV per structure
    energy_rmse: float
    forces_mae: float  # meV/A per component
    forces_rmse: float
    predicted_forces: np.ndarray
    reference_forces: np.ndarray

    @classmethod
    def of(cls, energy, ref_energy, forces, ref_forces) -> ErrorMetrics:
        """Errors from eV / eV/A arrays."""
        de = (np.asarray(energy) - np.asarray(ref_energy)) * 1000.0
        df = (np.asarray(forces) - np.asarray(ref_forces)) * 1000.0
        return cls(
            energy_mae=float(np.abs(de).mean()),
            energy_rmse=float(np.sqrt((de**2).mean())),
            forces_mae=float(np.abs(df).mean()),
            forces_rmse=float(np.sqrt((df**2).mean())),
            predicted_forces=np.asarray(forces),
            reference_forces=np.asarray(ref_forces),
        )

    def summary(self) -> dict[str, float]:
        """The four numbers, for logs (keys :data:`SUMMARY_KEYS`)."""
        return dict(zip(SUMMARY_KEYS, (self.energy_mae, self.energy_rmse, self.forces_mae, self.forces_rmse)))


#: The keys of :meth:`ErrorMetrics.summary` (``metrics.csv`` columns after a split's prefix).
SUMMARY_KEYS = ("energy_mae_meV", "energy_rmse_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A")
