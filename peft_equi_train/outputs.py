"""What a run writes into its output directory, each file atomically (results.json last), and its summary table.

The directory itself (lock, checks, overwrite) is :mod:`~peft_equi_train.run_directory`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from peft_equi.energy_correction import EnergyCorrection
from peft_equi.errors import EnergyShiftError, NotMergeableError
from peft_equi.families.base import Potential
from peft_equi.utils.copying import deepcopy_module
from peft_equi.utils.files import atomic_write
from peft_equi_train.logs import MetricsLog, plot_force_parity, plot_learning_curves

log = logging.getLogger(__name__)

#: What a run writes into its output directory (``overwrite`` deletes these and nothing else).
RUN_FILES = frozenset(
    {
        "metrics.csv",
        "results.json",
        "checkpoint.pt",
        "energy_correction.json",
        "merged.model",
        "merged.pth",
        "merged.nequip-state.pt",
        "learning_curves.png",
        "force_parity.png",
    }
)

#: The errors a run's result holds: the base model, the kept model and (with stage two) stage one's best model.
ERROR_PHASES = ("before", "after", "stage_one_best")


def write_outputs(
    output: Path,
    potential: Potential,
    model: nn.Module,
    energy_shift: np.ndarray,
    result: dict[str, Any],
    metrics: MetricsLog | None,
    plots: bool = True,
    location: Path | None = None,
) -> None:
    """The adapter, the energy correction, the merged model (when mergeable; ``result`` says), plots, and last
    ``results.json`` (its presence marks a finished run).  Every file is written atomically: a failure (a full
    disk) leaves no partial file.  ``location``: where ``output`` will be once the run is done (default: there).

    The merged model is the fine-tuned model: the energy correction is folded into it
    (:meth:`~peft_equi.families.base.Potential.fold_energy_shift`).  Where the family has no
    place for it, no merged model is written and ``result`` says why.
    """
    model.save_pretrained(output / "adapter")
    correction = EnergyCorrection(tuple(potential.atomic_numbers), tuple(np.asarray(energy_shift).tolist()))
    correction.write(output)
    try:
        merged = potential.fold_energy_shift(deepcopy_module(model).merge_and_unload(), correction)
        merged_path = potential.save_atomically(merged, output / "merged")
        result["merged_model"] = str((location or output) / merged_path.name)
    except (NotMergeableError, EnergyShiftError) as exc:
        if isinstance(exc, EnergyShiftError):
            log.warning("no merged model: %s", exc)
        result["merged_model"] = None
        result["not_merged_because"] = str(exc)
    if plots and metrics is not None and metrics.rows:
        plot_learning_curves(metrics.rows, output / "learning_curves.png")
        split = "test" if "test" in result["after"] else "valid"
        curves = {
            phase: (result[phase][split].predicted_forces, result[phase][split].reference_forces)
            for phase in ("before", "after")
        }
        plot_force_parity(curves, output / "force_parity.png")
    phases = [phase for phase in ERROR_PHASES if phase in result]
    summary = {phase: {split: errors.summary() for split, errors in result[phase].items()} for phase in phases}
    rest = {k: v for k, v in result.items() if k not in phases}
    _write_text(output / "results.json", json.dumps(summary | rest, indent=2))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def format_results(result: dict[str, Any]) -> str:
    """A before/after markdown table of energy and force errors."""
    lines = [
        "| split | phase | energy MAE (meV) | energy RMSE (meV) | force MAE (meV/A) | force RMSE (meV/A) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for split in result["after"]:
        for phase in ("before", "after"):
            e = result[phase][split]
            lines.append(
                f"| {split} | {phase} | {e.energy_mae:.1f} | {e.energy_rmse:.1f} | {e.forces_mae:.1f} | "
                f"{e.forces_rmse:.1f} |"
            )
    return "\n".join(lines)
