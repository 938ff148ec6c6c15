"""The fine-tuning configuration (pydantic): every option of ``peft-equi finetune`` with its help text.

Defaults follow the MMEA/ELoRA papers' rMD17 protocol (mace ``--loss=ef``): energy weight 1 on
the total-energy MSE, forces weight 1000, Adam with amsgrad, lr 0.005, batch 5,
ReduceLROnPlateau (patience 5, factor 0.8), EMA 0.995, gradient clipping at 100, float64,
the best-validation model kept.  The papers' stage two (mace ``--swa --start_swa=400``) is
``swa=True``; off by default, as in mace.  The stage-two fields keep mace's CLI names (``swa``,
``start_swa``, ``swa_lr``, ``swa_energy_weight``, ``swa_forces_weight``; ``swa_energy_loss`` in
their style) because users come from ``mace_run_train``; everything else (the engine's code, log
lines, ``stage_two_from_epoch`` in ``results.json``, the docs) calls it stage two.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from peft_equi.errors import ConfigError, one_line

#: Options that do not change what is trained, so that ``resume`` accepts a change of them:
#: where the run is written and how it reports, the number of epochs (a run may be extended),
#: how to load the model file, the device, the model kept at the end (the best one is tracked
#: either way), and the test set (evaluated only before and after; the elements it adds to a
#: cut model are checked separately).  Paths of files that are read are compared by content.
RESUMABLE_CHANGES = frozenset(
    {
        "output",
        "plots",
        "progress",
        "checkpoint_every",
        "resume",
        "overwrite",
        "epochs",
        "trust_pickle",
        "device",
        "keep",
        "test",
        "test_on_rest",
        "n_test",
    }
)

#: The ``e0s`` options that are not a file (:mod:`~peft_equi_train.reference`).
E0S_MODES = ("fit", "average", "none")


class FinetuneConfig(BaseModel):
    """Everything a fine-tuning run needs; read from flags, YAML or JSON (numbers must be finite: no inf, nan)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(description="model name (7net-0) or path (MACE .model file)")
    trust_pickle: bool = Field(False, description="allow loading whole pickled models (executes code from the file)")
    adapter: str = Field("mmea", description="adapter or preset name (see `peft-equi adapters`)")
    adapter_options: dict[str, Any] = Field({}, description="options of the adapter or preset, e.g. {rank: 16}")
    subset_elements: bool = Field(
        True,
        description="cut the model to the elements of the data (training, validation, test) when it knows more, "
        "before adapters are attached (MACE; as mace's load_foundations): fewer trainable parameters, "
        "smaller saved models, the same energies",
    )

    train: Path = Field(description="training data: extxyz or rMD17 .npz")
    valid: Path | None = Field(None, description="validation data (default, or 'none': split off the training file)")
    test: Path | None = Field(
        None, description="test data, evaluated whole before and after fine-tuning ('none': no test)"
    )
    test_on_rest: bool = Field(
        False, description="test on the structures of the training file not drawn for training or validation"
    )
    energy_key: str = Field("energy", description="extxyz info key of the reference energy (eV)")
    forces_key: str = Field("forces", description="extxyz array key of the reference forces (eV/A)")
    n_train: PositiveInt | None = Field(
        None, description="structures drawn (by seed) from the training file before the validation split"
    )
    valid_fraction: float = Field(0.5, ge=0, lt=1, description="share of the drawn structures used for validation")
    n_test: PositiveInt | None = Field(None, description="evaluate only the first n test structures")
    e0s: str = Field(
        "fit",
        description="per-element reference energies: 'fit' (least squares of the training residuals after the "
        "model's prediction, added on top: mace's --E0s=estimated), 'average' (mace's --E0s=average, as the "
        "MMEA/ELoRA papers: least squares of the raw training energies, replacing the model's own per-element "
        "energies; MACE), a path to an isolated-atoms extxyz file, or 'none'",
    )

    epochs: PositiveInt = Field(100, description="training epochs")
    batch_size: PositiveInt = Field(5, description="structures per optimisation step (over all processes)")
    eval_batch_size: PositiveInt = Field(10, description="structures per evaluation batch")
    lr: PositiveFloat = Field(5e-3, description="learning rate")
    weight_decay: float = Field(1e-8, ge=0, description="Adam weight decay")
    amsgrad: bool = Field(True, description="Adam with amsgrad")
    energy_loss: Literal["total", "per_atom"] = Field(
        "total",
        description="energy error on the total energy (the papers' and mace's 'ef' loss) or per atom "
        "(mace's 'weighted' loss: N^2 times weaker at the same weight)",
    )
    energy_weight: float = Field(1.0, ge=0, description="weight of the energy MSE (see energy_loss)")
    forces_weight: float = Field(1000.0, ge=0, description="weight of the force-component MSE")
    swa: bool = Field(
        False,
        description="mace's stage two ('--swa'): from epoch start_swa on, lr swa_lr and the swa loss weights; "
        "the best model is then chosen among stage-two epochs",
    )
    start_swa: PositiveInt | None = Field(
        None, description="stage two begins after this many epochs (mace's --start_swa); 'none': 3/4 of the epochs"
    )
    swa_lr: PositiveFloat = Field(1e-3, description="learning rate of stage two")
    swa_energy_loss: Literal["total", "per_atom"] = Field(
        "per_atom",
        description="energy error of stage two: mace's stage two uses its per-atom 'weighted' loss "
        "(WeightedEnergyForcesLoss) whatever --loss is, so the papers' 1000 weighs ((E - E_ref)/N)^2",
    )
    swa_energy_weight: float = Field(1000.0, ge=0, description="energy weight of stage two (see swa_energy_loss)")
    swa_forces_weight: float = Field(100.0, ge=0, description="forces weight of stage two")
    keep: Literal["best", "last"] = Field(
        "best", description="model kept and tested: lowest validation loss (as mace) or the last epoch"
    )
    ema_decay: float | None = Field(0.995, gt=0, lt=1, description="EMA of the trained weights ('none': off)")
    clip_grad: PositiveFloat | None = Field(100.0, description="gradient-norm clipping ('none': off)")
    scheduler_patience: PositiveInt = Field(5, description="ReduceLROnPlateau patience (epochs)")
    scheduler_factor: float = Field(0.8, gt=0, lt=1, description="ReduceLROnPlateau factor")
    dtype: Literal["float64", "float32"] = Field("float64", description="floating-point precision")
    device: str = Field("cpu", description="torch device")
    backend: Literal["e3nn", "cueq"] = Field(
        "e3nn", description="run the model on e3nn or on cuequivariance (MACE; layout ir_mul), adapters included"
    )
    seed: int = Field(0, ge=0, lt=2**32, description="seed of data selection, adapter init and shuffling")

    output: Path = Field(Path("runs/finetune"), description="output directory")
    checkpoint_every: PositiveInt = Field(1, description="write a resumable checkpoint every n epochs")
    resume: bool = Field(
        False, description="continue from output/checkpoint.pt (refused when an option that changes training differs)"
    )
    overwrite: bool = Field(
        False,
        description="replace the previous run in output (its files are deleted first); a non-empty output is "
        "otherwise refused, and so is one holding files a run does not write",
    )
    plots: bool = Field(True, description="write learning-curve and force-parity PNGs")
    retain: list[Path] = Field(
        [],
        description="structure files on which to measure forgetting (comma-separated on the command line): "
        "errors against the foundation's labels before, every retain_every epochs and after fine-tuning",
    )
    retain_labels: Literal["foundation", "file"] = Field(
        "foundation",
        description="labels of the retain structures: 'foundation', the foundation model's own energies and forces "
        "(computed once before fine-tuning; any foundation, no data needed) or 'file', those in the files",
    )
    retain_every: PositiveInt = Field(1, description="evaluate the retain files every n epochs (and the last)")
    replay: list[Path] = Field(
        [],
        description="structure files replayed in every training batch to keep the foundation's behaviour "
        "(comma-separated on the command line)",
    )
    replay_labels: Literal["foundation", "file"] = Field(
        "foundation",
        description="labels of the replay structures: 'foundation' (pseudo-labels of the frozen foundation, computed "
        "once) or 'file'",
    )
    replay_ratio: float = Field(1.0, ge=0, description="replay structures per training structure in each batch")
    replay_weight: float = Field(1.0, ge=0, description="weight of the replay loss beside the training loss")
    progress: bool = Field(True, description="show progress bars")

    @model_validator(mode="before")
    @classmethod
    def _none_strings(cls, data: Any) -> Any:
        """'none' (any case) or 'null' for an option that may be None is None (flags and YAML alike)."""
        if not isinstance(data, dict):
            return data
        optional = {name for name, field in cls.model_fields.items() if not field.is_required() and _allows_none(field)}
        return {
            k: None if k in optional and isinstance(v, str) and v.strip().lower() in ("none", "null") else v
            for k, v in data.items()
        }

    @model_validator(mode="after")
    def _stage_two(self) -> FinetuneConfig:
        if self.swa and self.start_swa is not None and self.start_swa >= self.epochs:
            raise ValueError(f"start_swa ({self.start_swa}) must be less than epochs ({self.epochs})")
        if self.resume and self.overwrite:
            raise ValueError("give resume (continue the run in output) or overwrite (replace it), not both")
        if self.replay and self.replay_ratio > 0 and self.replay_batch_size() == 0:
            raise ValueError(
                f"replay_ratio {self.replay_ratio} x batch_size {self.batch_size} rounds to no replay structure "
                "per batch: raise replay_ratio (or set it to 0 to train without replay)"
            )
        return self

    def replay_batch_size(self) -> int:
        """Replay structures per optimisation step: ``round(replay_ratio * batch_size)`` (0 without replay)."""
        return round(self.replay_ratio * self.batch_size) if self.replay else 0

    def stage_two_start(self) -> int | None:
        """Epochs of stage one when ``swa`` is on (mace's rule for ``start_swa=None``), else None."""
        if not self.swa:
            return None
        return self.start_swa if self.start_swa is not None else max(1, self.epochs // 4 * 3)

    @field_validator("retain", "replay", mode="before")
    @classmethod
    def _retain(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)):  # one flag value: comma-separated paths
            return [part.strip() for part in str(value).split(",") if part.strip()]
        return value

    @field_validator("e0s")
    @classmethod
    def _e0s(cls, value: str) -> str:
        if value not in E0S_MODES and not Path(value).is_file():
            raise ValueError(f"e0s must be 'fit', 'average', 'none' or an existing isolated-atoms file, got {value!r}")
        return value

    @classmethod
    def checked(cls, options: dict[str, Any], where: str = "") -> FinetuneConfig:
        """Validate ``options``; problems raise :class:`~peft_equi.errors.ConfigError` naming each option."""
        try:
            return cls.model_validate(options)
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, where) from None

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        """Read YAML or JSON, with ``overrides`` (e.g. from command-line flags) taking precedence.

        Invalid YAML and invalid options raise :class:`~peft_equi.errors.ConfigError`.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a YAML or JSON text file (not UTF-8 text)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {one_line(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
        return cls.checked(data | overrides)

    def training_options(self) -> dict[str, Any]:
        """The options that change what is trained (all but :data:`RESUMABLE_CHANGES`), as JSON values."""
        return self.model_dump(mode="json", exclude=set(RESUMABLE_CHANGES))

    def torch_dtype(self):
        """The ``torch.dtype`` of :attr:`dtype`."""
        import torch

        return getattr(torch, self.dtype)


def _allows_none(field: Any) -> bool:
    annotation = field.annotation
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )
