"""Run logs: a CSV of per-epoch metrics (and TensorBoard when installed), and PNG plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from peft_equi.errors import PeftEquiError, one_line
from peft_equi.utils.files import atomic_write


class MetricsLog:
    """Appends one row per epoch to ``metrics.csv``; mirrors scalars to TensorBoard if available."""

    def __init__(self, directory: Path, resume: bool, upto_epoch: int | None = None) -> None:
        """``resume``: keep the rows of ``metrics.csv`` up to ``upto_epoch`` (the checkpoint's; later ones rerun)."""
        self.path = directory / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if resume and self.path.is_file():
            try:
                with self.path.open(encoding="utf-8") as f:
                    self.rows = [{k: _number(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
                if upto_epoch is not None:
                    self.rows = [row for row in self.rows if row["epoch"] <= upto_epoch]
            except (ValueError, TypeError, KeyError, csv.Error) as exc:  # damaged (a run never writes it so)
                raise PeftEquiError(
                    f"{self.path}: cannot be read to resume ({type(exc).__name__}: {one_line(exc)}); restore it, "
                    "or remove it to resume without the earlier epochs' rows"
                ) from None
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def append(self, row: dict[str, Any]) -> None:
        """Add a row and rewrite the CSV atomically (small files; always whole on disk)."""
        self.rows.append(row)
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, lambda tmp: tmp.write_text(text.getvalue(), encoding="utf-8", newline=""))
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, int(row["epoch"]))
            self.writer.flush()


def _number(key: str, value: str) -> float | int:
    return int(float(value)) if key in INTEGER_COLUMNS else float(value)


#: Columns of ``metrics.csv`` holding integers.
INTEGER_COLUMNS = ("epoch", "stage")


def plot_learning_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Training and validation loss, and validation (and retention) errors, against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.semilogy(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.semilogy(epochs, [r["valid_loss"] for r in rows], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_err.plot(epochs, [r["valid_energy_mae_meV"] for r in rows], label="energy MAE (meV)")
    ax_err.plot(epochs, [r["valid_forces_mae_meV_per_A"] for r in rows], label="force MAE (meV/A)")
    for key in [k for k in rows[0] if k.startswith("retain_") and k.endswith("_forces_mae_meV_per_A")]:
        points = [(r["epoch"], r[key]) for r in rows if np.isfinite(r[key])]  # evaluated every retain_every epochs
        name = key.removesuffix("_forces_mae_meV_per_A")
        ax_err.plot(*zip(*points), "o--", label=f"{name}: force MAE vs foundation labels (meV/A)")
    ax_err.set(xlabel="epoch", title="validation errors (and retention)")
    ax_err.legend()
    return _save_figure(fig, path)


def plot_force_parity(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Predicted vs reference force components, one series per label (e.g. before / after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    low, high = np.inf, -np.inf
    for label, (predicted, reference) in curves.items():
        ax.scatter(reference.ravel(), predicted.ravel(), s=3, alpha=0.5, label=label)
        low, high = min(low, reference.min(), predicted.min()), max(high, reference.max(), predicted.max())
    ax.plot([low, high], [low, high], "k--", linewidth=0.8)
    ax.set(xlabel="reference force (eV/A)", ylabel="predicted force (eV/A)", title="force parity (test)")
    ax.legend()
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)
