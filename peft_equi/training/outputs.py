"""A run's output directory: refusing to clobber it, clearing a previous run, writing the results."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from peft_equi.energy_correction import EnergyCorrection
from peft_equi.errors import EnergyShiftError, NotMergeableError, PeftEquiError
from peft_equi.families.base import Potential
from peft_equi.training.logs import MetricsLog, plot_force_parity, plot_learning_curves

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


def check_output(output: Path, resume: bool, overwrite: bool, first_process: bool = True) -> list[str]:
    """Refuse a non-empty ``output`` unless resuming or overwriting a run; the previous run's entries to delete.

    Nothing is deleted here: :func:`clear_output` does it once the model is loaded and
    checked, so that a run that fails before (a mistyped model, a missing trust_pickle,
    unknown elements) leaves the previous run as it was.
    """
    if output.exists() and not output.is_dir():
        raise PeftEquiError(f"output {output} exists and is not a directory")
    entries = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not first_process or not entries or resume:
        output.mkdir(parents=True, exist_ok=True)
        return []
    if not overwrite:
        raise PeftEquiError(
            f"output {output} is not empty (a previous run?): give --resume to continue it, "
            f"--overwrite to replace it, or another --output"
        )
    foreign = [name for name in entries if not _run_output(output / name)]
    if foreign:
        raise PeftEquiError(
            f"not overwriting {output}: it holds files a run does not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); remove them or choose another --output"
        )
    return entries


def clear_output(output: Path, entries: list[str]) -> None:
    """``overwrite``: delete the previous run's ``entries`` (checked by :func:`check_output`)."""
    if not entries:
        return
    for name in entries:
        path = output / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    log.info("overwrite: removed the previous run in %s (%d entries)", output, len(entries))


def _run_output(path: Path) -> bool:
    """Whether ``path`` (an entry of an output directory) is something a run writes."""
    if path.name in RUN_FILES or path.name.startswith(".checkpoint.pt."):
        return path.is_file()
    if path.name == "tensorboard":
        return path.is_dir()
    if path.name == "adapter":  # only a saved adapter (or an empty folder): files, with its config among them
        if not path.is_dir() or not all(p.is_file() for p in path.iterdir()):
            return False
        return (path / "adapter_config.json").is_file() or not any(path.iterdir())
    return False


def write_outputs(
    output: Path,
    potential: Potential,
    model: nn.Module,
    energy_shift: np.ndarray,
    result: dict[str, Any],
    metrics: MetricsLog | None,
    plots: bool = True,
) -> None:
    """The adapter, the energy correction, the merged model (when mergeable; ``result`` says), results and plots.

    The merged model is the fine-tuned model: the energy correction is folded into it
    (:meth:`~peft_equi.families.base.Potential.fold_energy_shift`).  Where the family has no
    place for it, no merged model is written and ``result`` says why.
    """
    model.save_pretrained(output / "adapter")
    correction = EnergyCorrection(tuple(potential.atomic_numbers), tuple(np.asarray(energy_shift).tolist()))
    correction.write(output)
    try:
        merged = potential.fold_energy_shift(copy.deepcopy(model).merge_and_unload(), correction)
        result["merged_model"] = str(potential.save(merged, output / "merged"))
    except (NotMergeableError, EnergyShiftError) as exc:
        if isinstance(exc, EnergyShiftError):
            log.warning("no merged model: %s", exc)
        result["merged_model"] = None
        result["not_merged_because"] = str(exc)
    summary = {
        phase: {split: errors.summary() for split, errors in splits.items()}
        for phase, splits in (("before", result["before"]), ("after", result["after"]))
    }
    (output / "results.json").write_text(
        json.dumps(summary | {k: v for k, v in result.items() if k not in ("before", "after")}, indent=2)
    )
    if plots and metrics is not None and metrics.rows:
        plot_learning_curves(metrics.rows, output / "learning_curves.png")
        split = "test" if "test" in result["after"] else "valid"
        curves = {
            phase: (result[phase][split].predicted_forces, result[phase][split].reference_forces)
            for phase in ("before", "after")
        }
        plot_force_parity(curves, output / "force_parity.png")


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
