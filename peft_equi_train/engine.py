"""The fine-tuning engine: adapters on a pretrained potential, trained on energies and forces.

One :class:`Finetuner` run: load and split the data, check the output directory (and the
checkpoint when resuming), load the model and cut it to the data's elements, correct the
per-element reference energies (:mod:`~peft_equi_train.reference`; foundation models were
trained on another level of theory), evaluate the base model
(:mod:`~peft_equi_train.evaluation`), attach adapters, train
(:mod:`~peft_equi_train.loop`, on Lightning Fabric: one process, or DDP under
``torchrun``), keep the best-validation (EMA) weights or the last, evaluate again, and write
the adapter (peft format), the merged model when mergeable, logs and plots
(:mod:`~peft_equi_train.outputs`).  Batches come from a torch ``DataLoader``
(:mod:`~peft_equi_train.loader`).  Messages go to the ``peft_equi_train`` loggers (the first
process only); the CLI shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import peft_equi
from peft_equi.core.presets import resolve_config
from peft_equi.errors import DataError, PeftEquiError, element_names
from peft_equi.families.base import Potential, load_potential
from peft_equi.tuner.state_dict import set_peft_model_state_dict
from peft_equi_train.checkpoint import check_elements, check_resumable, input_digests, load_checkpoint, run_state
from peft_equi_train.config import E0S_MODES, FinetuneConfig
from peft_equi_train.data import LabelledStructures, read_dataset, read_isolated_atom_energies
from peft_equi_train.data import select_and_split as split_data
from peft_equi_train.evaluation import evaluate
from peft_equi_train.foundation_data import PREFIX as RETAIN_PREFIX
from peft_equi_train.foundation_data import check_files, foundation_elements, replay_set, retain_sets
from peft_equi_train.loader import Collate, GraphDataset, prepare
from peft_equi_train.loop import TrainingDivergedError, TrainingLoop, make_fabric, new_state
from peft_equi_train.metrics import ErrorMetrics
from peft_equi_train.outputs import RUN_FILES, format_results, write_outputs
from peft_equi_train.reference import energy_correction
from peft_equi_train.run_directory import RunDirectory

__all__ = ["RUN_FILES", "Finetuner", "TrainingDivergedError", "format_results", "load_splits"]

log = logging.getLogger(__name__)


def load_splits(config: FinetuneConfig) -> tuple[LabelledStructures, LabelledStructures, LabelledStructures | None]:
    """Read, check and split the data: training, validation, test (no model needed: bad data fails first)."""
    c = config
    if c.test is not None and c.test_on_rest:
        raise PeftEquiError("give either a test file or test_on_rest, not both")
    check_files(c)
    full = read_dataset(c.train, c.energy_key, c.forces_key)
    try:
        train, valid, rest = split_data(full, c.n_train, c.valid_fraction if c.valid is None else 0.0, c.seed)
    except DataError as exc:
        raise DataError(f"{c.train}: {exc}") from None
    if c.valid is not None:
        valid = read_dataset(c.valid, c.energy_key, c.forces_key)
    test = read_dataset(c.test, c.energy_key, c.forces_key) if c.test else (rest if c.test_on_rest else None)
    if test is not None and len(test) == 0:
        raise PeftEquiError("the test set is empty (test_on_rest with every structure drawn?)")
    if test is not None and c.n_test is not None:
        test = test.subset(range(min(c.n_test, len(test))))
    if len(train) < c.batch_size or len(valid) == 0:
        raise PeftEquiError(
            f"{len(train)} training / {len(valid)} validation structures: need at least one batch "
            f"({c.batch_size}) for training and one structure for validation"
        )
    if c.e0s not in E0S_MODES:  # checked now; used after the model is loaded
        missing = sorted(set(train.atomic_numbers) - set(read_isolated_atom_energies(c.e0s)))
        if missing:
            raise PeftEquiError(f"{c.e0s} has no isolated-atom energy for atomic numbers {missing}")
    return train, valid, test


class Finetuner:
    """Runs :class:`FinetuneConfig`; ``potential`` may be given to skip loading by name.

    After :meth:`run`, :attr:`model` is the trained PeftModel and :attr:`energy_shift` the energy
    correction; :attr:`loop` is the :class:`~peft_equi_train.loop.TrainingLoop`.
    """

    def __init__(self, config: FinetuneConfig, potential: Potential | None = None) -> None:
        self.config = config
        self.fabric = make_fabric(config.device)
        self.device = self.fabric.device
        self.dtype = config.torch_dtype()
        self.output = Path(config.output)
        self.loop = TrainingLoop(config, self.fabric, self.output)
        self._potential: Potential | None = None
        self.energy_shift = np.zeros(0)
        if potential is not None:
            self.potential = potential.to(self.device, self.dtype)
        self.model: torch.nn.Module | None = None  # the PeftModel, after run()
        self.replay: GraphDataset | None = None  # the replay structures (foundation_data), when replaying
        self.directory: RunDirectory | None = None  # the output directory, claimed by run()

    @property
    def potential(self) -> Potential:
        """The model being fine-tuned; loaded on first use (:meth:`run` checks options and data first).

        Loaded in float64 (exact for a float32 file) and cast to the run's dtype by :meth:`_prepare_model`
        after any cut, so that a cut model's weights do not depend on the run's dtype (adapters' base
        fingerprints compare them exactly).
        """
        if self._potential is None:
            c = self.config
            potential = load_potential(c.model, dtype=torch.float64, trust_pickle=c.trust_pickle)
            self.potential = potential.to(self.device)
        return self._potential

    @potential.setter
    def potential(self, potential: Potential) -> None:
        self._potential = potential
        self.energy_shift = np.zeros(len(potential.atomic_numbers))

    @property
    def elements(self) -> list[int]:
        """The atomic numbers of the model (after any cut)."""
        return self.potential.atomic_numbers

    @property
    def collate(self) -> Collate:
        """Batches on this process's device, in the run's dtype."""
        return Collate(self.potential, self.device, self.dtype)

    def prepare(self, data: LabelledStructures) -> GraphDataset:
        """Model inputs for ``data`` with the current energy correction."""
        return prepare(self.potential, data, self.energy_shift)

    def run(self) -> dict[str, Any]:
        """Fine-tune; returns the before/after errors (and writes everything under ``output``).

        The output directory is locked for the run; with ``overwrite`` the new run replaces the
        previous one only once all its outputs are written (:mod:`~peft_equi_train.run_directory`).
        """
        try:
            return self._run()
        finally:
            if self.directory is not None:
                self.directory.close()

    def _run(self) -> dict[str, Any]:
        c = self.config
        peft_config, checkpoint, digests, splits = self._start()
        before = self._errors(self.potential.model, splits)
        if self.fabric.is_global_zero:
            sizes = ", ".join(f"{len(prepared)} {split}" for split, prepared in splits.items())
            log.info("%s: %s structures; before fine-tuning: %s", self.potential.name, sizes, _brief(before))
        torch.manual_seed(c.seed)
        model = peft_equi.get_peft_model(self.potential.model, peft_config)
        state = new_state(c, model)
        if checkpoint is not None:
            state.load(checkpoint)
        self.loop.resumed, self.loop.checkpoint_written = checkpoint is not None, False
        self.loop.run_state = run_state(c, self.energy_shift, self.elements, digests)
        self.fabric.launch()
        retain = {name: data for name, data in splits.items() if name.startswith(RETAIN_PREFIX)}
        kept_epoch = self.loop.fit(self.potential, state, splits["train"], splits["valid"], retain, self.replay)
        _check_finite(model, kept_epoch)
        result = {
            "before": before,
            "after": self._errors(model, splits),
            "trainable_parameters": model.num_trainable_parameters(),
            "kept": {"keep": c.keep, "epoch": kept_epoch, "stage_two_from_epoch": _one_based(c.stage_two_start())},
        }
        if state.stage_one_best is not None and state.stage_one_best.state is not None:
            result["stage_one_best"] = self._stage_one_errors(model, state.stage_one_best.state, splits)
            result["kept"]["stage_one_best_epoch"] = state.stage_one_best.epoch
        self.model = model  # the trained PeftModel stays usable after the run
        if self.fabric.is_global_zero:
            metrics, work = self.loop.metrics, self.directory.work
            write_outputs(work, self.potential, model, self.energy_shift, result, metrics, c.plots, self.output)
            self.directory.commit()
        self.fabric.barrier()
        return result

    def _start(self) -> tuple[Any, dict[str, Any] | None, dict[str, str], dict[str, GraphDataset]]:
        """Everything before training: checks (those that need no model first), the model, the energy correction.

        Returns the adapter config, the checkpoint (resuming), the input files' digests and the prepared splits.
        """
        c = self.config
        peft_config = resolve_config(c.adapter, **c.adapter_options)
        world = self.fabric.world_size
        if c.replay_batch_size() % world:
            raise PeftEquiError(
                f"the replay batch, round(replay_ratio x batch_size) = {c.replay_batch_size()}, is not divisible by "
                f"{world} processes: change replay_ratio"
            )
        train, valid, test = load_splits(c)
        self.directory = RunDirectory(self.output, c.resume, c.overwrite, self.fabric.global_rank == 0).open()
        self.loop.output = self.directory.work  # a sibling with overwrite: swapped in when the run is done
        self.loop.keeps_checkpoints = not self.directory.staged
        checkpoint = load_checkpoint(self.output / "checkpoint.pt") if c.resume else None
        digests = input_digests(c)
        if checkpoint is not None:
            check_resumable(c, checkpoint, digests)
        _ = self.potential  # loads the model
        torch.manual_seed(c.seed)
        for name, data in (("training data", train), ("validation data", valid), ("test data", test)):
            if data is not None:
                self.potential.check_elements(data.atomic_numbers, f"the {name}")
        self._prepare_model([train, valid, test], foundation_elements(c))
        if checkpoint is not None:
            check_elements(checkpoint, self.elements)
            self.energy_shift = np.asarray(checkpoint["delta"])
        else:
            self.energy_shift = energy_correction(
                self.potential, self.potential.model, train, c.e0s, c.eval_batch_size, self.collate
            )
        splits = {"train": self.prepare(train), "valid": self.prepare(valid)}
        if test is not None:
            splits["test"] = self.prepare(test)
        splits |= retain_sets(c, self.potential, self.potential.model, self.collate)  # before any adapter
        self.replay = replay_set(c, self.potential, self.potential.model, self.collate)
        return peft_config, checkpoint, digests, splits

    def _prepare_model(self, datasets: Sequence[LabelledStructures | None], others: Sequence[int] = ()) -> None:
        """Cut the model to the data's elements (``subset_elements``), then move it to cuequivariance (``backend``).

        The cut comes first (it works on e3nn models) and before the energy correction and
        the adapters, which are then sized for the cut model.  ``others``: elements the model
        must keep besides the data's (those of the retain and replay files).
        """
        c, first = self.config, self.fabric.is_global_zero
        used = sorted({z for data in datasets if data is not None for z in data.atomic_numbers} | set(others))
        before = len(self.elements)
        if c.subset_elements and set(used) < set(self.elements) and self._subset(used):
            self.potential = self.potential  # the setter takes the cut model's elements (and a zero correction)
            if first:
                names = element_names(self.elements, with_numbers=False)
                log.info("subset_elements: model cut from %d to the data's elements (%s)", before, names)
        self.potential.to(self.device, self.dtype)
        if c.backend == "cueq":
            report = self.potential.to_cueq(c.device)
            if first:
                log.info("%s", report)

    def _subset(self, elements: list[int]) -> bool:
        try:
            return self.potential.subset_elements(elements)
        except PeftEquiError as exc:
            raise PeftEquiError(f"{exc} (subset_elements: false keeps all the model's elements)") from exc

    def _stage_one_errors(
        self, model: torch.nn.Module, tensors: dict[str, torch.Tensor], splits: dict[str, GraphDataset]
    ) -> dict[str, ErrorMetrics]:
        """The errors of stage one's best model (``tensors``), as mace tests it beside stage two's; ``model``
        keeps its own tensors."""
        kept = {k: v.detach().clone() for k, v in model.adapter_state_dict().items()}
        set_peft_model_state_dict(model, tensors, what="stage one's best adapter tensors")
        try:
            return self._errors(model, splits)
        finally:
            set_peft_model_state_dict(model, kept, what="the kept adapter tensors")

    def _errors(self, model: torch.nn.Module, splits: dict[str, GraphDataset]) -> dict[str, ErrorMetrics]:
        """Errors of ``model`` on every split but training: validation, test (when given), the retain files."""
        size, collate = self.config.eval_batch_size, self.collate
        return {
            split: evaluate(self.potential, model, data, batch_size=size, collate=collate)
            for split, data in splits.items()
            if split != "train"
        }


def _check_finite(model: torch.nn.Module, epoch: int) -> None:
    """Nothing non-finite is kept: the kept adapter's tensors must be finite (else the run stops, writing nothing)."""
    broken = [k for k, v in model.adapter_state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise TrainingDivergedError(
            f"the adapter kept (epoch {epoch}) has non-finite values ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}): nothing written (try a lower lr or float64)"
        )


def _brief(errors: dict[str, ErrorMetrics]) -> str:
    """One line of energy and force MAEs per split."""
    return "; ".join(f"{s} E MAE {e.energy_mae:.1f} meV, F MAE {e.forces_mae:.1f} meV/A" for s, e in errors.items())


def _one_based(epochs_before: int | None) -> int | None:
    return None if epochs_before is None else epochs_before + 1
