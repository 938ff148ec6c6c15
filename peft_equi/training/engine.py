"""The fine-tuning loop: adapters on a pretrained potential, trained on energies and forces.

One :class:`Finetuner` run: load data and model, correct per-element reference energies
(foundation models were trained on another level of theory), evaluate the base model,
attach adapters, train (Adam/amsgrad, ReduceLROnPlateau, EMA, clipping, optionally mace's
stage two), keep the best-validation (EMA) weights or the last, evaluate again, and write
the adapter (peft format), the merged model when mergeable, logs and plots.

Stage two (``swa``) follows ``mace_run_train --swa``: from epoch ``start_swa`` on, the
learning rate is ``swa_lr`` (mace's ``SWALR`` with a one-epoch anneal reaches it in the first
stage-two epoch), ReduceLROnPlateau stops, the loss takes the ``swa_*`` weights, and the
best-model search starts anew (validation losses of the two stages are not comparable).
mace also keeps an ``AveragedModel`` that it never evaluates or saves; we do not.

Data parallelism uses ``torch.distributed`` (``DistributedDataParallel``), launched by
``torchrun``: every process takes an equal share of each batch and DDP averages gradients,
so ``torchrun --nproc_per_node 2`` follows the same trajectory as one process.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import peft_equi
from peft_equi.core.presets import validate_options
from peft_equi.errors import ConfigError, DataError, NotMergeableError, PeftEquiError, element_names
from peft_equi.families.base import Potential, load_potential
from peft_equi.training.checkpoint import atomic_save, load_checkpoint
from peft_equi.training.config import FinetuneConfig
from peft_equi.training.data import (
    Dataset,
    composition_matrix,
    fit_reference_energies,
    read_dataset,
    read_isolated_atom_energies,
)
from peft_equi.training.data import select_and_split as split_data
from peft_equi.training.logs import MetricsLog, plot_force_parity, plot_learning_curves
from peft_equi.training.metrics import Errors, weighted_loss
from peft_equi.utils.files import sha256


class TrainingDivergedError(PeftEquiError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
#: Options naming files that are read: compared by content when resuming.
INPUT_FILES = ("model", "train", "valid", "e0s")


@dataclass
class Best:
    """The kept model so far: the lowest validation loss, its epoch (1-based) and trainable tensors."""

    loss: float = float("inf")
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None

    def offer(self, loss: float, epoch: int, model: nn.Module) -> None:
        """Keep ``model``'s current trainable tensors if ``loss`` is the lowest so far."""
        if loss < self.loss:
            self.loss, self.epoch = loss, epoch
            self.state = {k: v.detach().clone() for k, v in model.adapter_state_dict().items()}

    def reset(self) -> None:
        """Forget the kept model (stage two starts a new search)."""
        self.loss, self.epoch, self.state = float("inf"), 0, None

    def as_dict(self) -> dict[str, Any]:
        """For checkpoints (tensors and numbers only)."""
        return {"loss": self.loss, "epoch": self.epoch, "state": self.state}

    def load(self, saved: dict[str, Any]) -> None:
        """Restore from :meth:`as_dict`."""
        self.loss, self.epoch, self.state = float(saved["loss"]), int(saved["epoch"]), saved["state"]


@dataclass
class Prepared:
    """A dataset turned into model inputs, with the per-structure energy correction."""

    data: Dataset
    graphs: list[Any]
    shifts: np.ndarray  # sum_z n_z delta_z per structure (eV)


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class Finetuner:
    """Runs :class:`FinetuneConfig`; ``potential`` may be given to skip loading by name."""

    def __init__(self, config: FinetuneConfig, potential: Potential | None = None) -> None:
        self.config = config
        self.rank, self.world = _world()
        self.device = torch.device(config.device)
        self.dtype = config.torch_dtype()
        self.output = Path(config.output)
        self._potential: Potential | None = None
        self.elements: list[int] = []
        self.delta = np.zeros(0)
        if potential is not None:
            potential.model.to(device=self.device, dtype=self.dtype)
            self.potential = potential
        self.weights = (config.energy_weight, config.forces_weight)  # the current stage's loss weights
        self.model: nn.Module | None = None  # the PeftModel, after run()
        self._checkpoint_written = False
        self._digests: dict[str, str] | None = None

    @property
    def potential(self) -> Potential:
        """The model being fine-tuned; loaded on first use (:meth:`run` checks options and data first)."""
        if self._potential is None:
            c = self.config
            potential = load_potential(c.model, dtype=self.dtype, trust_pickle=c.trust_pickle)
            potential.model.to(device=self.device, dtype=self.dtype)
            self.potential = potential
        return self._potential

    @potential.setter
    def potential(self, potential: Potential) -> None:
        self._potential = potential
        self.elements = potential.atomic_numbers
        self.delta = np.zeros(len(self.elements))

    # -- data --

    def _load_data(self) -> tuple[Dataset, Dataset, Dataset | None]:
        """Read, check and split the data (no model needed: bad data fails before one is loaded)."""
        c = self.config
        if c.test is not None and c.test_on_rest:
            raise PeftEquiError("give either a test file or test_on_rest, not both")
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
        if c.e0s not in ("fit", "none"):  # checked now; used after the model is loaded
            missing = sorted(set(train.atomic_numbers) - set(read_isolated_atom_energies(c.e0s)))
            if missing:
                raise PeftEquiError(f"{c.e0s} has no isolated-atom energy for atomic numbers {missing}")
        return train, valid, test

    def _check_elements(self, train: Dataset, valid: Dataset, test: Dataset | None) -> None:
        for name, data in (("training data", train), ("validation data", valid), ("test data", test)):
            if data is not None:
                self.potential.check_elements(data.atomic_numbers, f"the {name}")

    def _check_output(self) -> list[str]:
        """Refuse a non-empty output unless resuming or overwriting a run; the previous run's entries to delete.

        Nothing is deleted here: :meth:`_clear_output` does it once the model is loaded and
        checked, so that a run that fails before (a mistyped model, a missing trust_pickle,
        unknown elements) leaves the previous run as it was.
        """
        c = self.config
        if self.output.exists() and not self.output.is_dir():
            raise PeftEquiError(f"output {self.output} exists and is not a directory")
        entries = sorted(p.name for p in self.output.iterdir()) if self.output.is_dir() else []
        if self.rank != 0 or not entries or c.resume:
            self.output.mkdir(parents=True, exist_ok=True)
            return []
        if not c.overwrite:
            raise PeftEquiError(
                f"output {self.output} is not empty (a previous run?): give --resume to continue it, "
                f"--overwrite to replace it, or another --output"
            )
        foreign = [name for name in entries if not _run_output(self.output / name)]
        if foreign:
            raise PeftEquiError(
                f"not overwriting {self.output}: it holds files a run does not write ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}); remove them or choose another --output"
            )
        return entries

    def _clear_output(self, entries: list[str]) -> None:
        """``overwrite``: delete the previous run's ``entries`` (checked by :meth:`_check_output`)."""
        if not entries:
            return
        for name in entries:
            path = self.output / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        print(f"overwrite: removed the previous run in {self.output} ({len(entries)} entries)")

    def _prepare_model(self, datasets: Sequence[Dataset | None]) -> None:
        """Cut the model to the data's elements (``subset_elements``), then move it to cuequivariance (``backend``).

        The cut comes first (it works on e3nn models) and before the energy correction and
        the adapters, which are then sized for the cut model.
        """
        c = self.config
        used = sorted({z for data in datasets if data is not None for z in data.atomic_numbers})
        if c.subset_elements and set(used) < set(self.elements) and self._subset(used):
            if self.rank == 0:
                names = element_names(self.potential.atomic_numbers, with_numbers=False)
                print(f"subset_elements: model cut from {len(self.elements)} to the data's elements ({names})")
            self.potential = self.potential  # the setter takes the cut model's elements (and a zero correction)
        if c.backend == "cueq":
            report = self.potential.to_cueq(c.device)
            if self.rank == 0:
                print(report)

    def _subset(self, elements: list[int]) -> bool:
        try:
            return self.potential.subset_elements(elements)
        except PeftEquiError as exc:
            raise PeftEquiError(f"{exc} (subset_elements: false keeps all the model's elements)") from exc

    def prepare(self, data: Dataset) -> Prepared:
        """Model inputs for ``data`` with the current energy correction."""
        return Prepared(data, self.potential.graphs(data.atoms), composition_matrix(data, self.elements) @ self.delta)

    def _batches(self, prepared: Prepared, indices: Sequence[int], size: int) -> Iterator[tuple[Any, ...]]:
        for start in range(0, len(indices), size):
            chosen = list(indices[start : start + size])
            yield self._batch(prepared, chosen)

    def _batch(self, prepared: Prepared, chosen: Sequence[int]) -> tuple[Any, ...]:
        batch = self.potential.collate([prepared.graphs[i] for i in chosen], self.device, self.dtype)
        tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)  # noqa: E731
        energy = tensor(prepared.data.energies[chosen])
        forces = tensor(np.concatenate([prepared.data.forces[i] for i in chosen]))
        shift = tensor(prepared.shifts[chosen])
        n_atoms = tensor([len(prepared.data.atoms[i]) for i in chosen])
        return batch, energy, forces, shift, n_atoms

    # -- evaluation --

    def evaluate(self, model: nn.Module, prepared: Prepared) -> Errors:
        """Errors of ``model`` (+ the energy correction) on ``prepared``."""
        energies, forces = [], []
        for batch, _, _, shift, _ in self._batches(prepared, range(len(prepared.data)), self.config.eval_batch_size):
            energy, force = self.potential.energy_forces(model, batch, training=False)
            energies.append((energy + shift).detach().cpu().numpy())
            forces.append(force.detach().cpu().numpy())
        return Errors.of(
            np.concatenate(energies),
            prepared.data.energies,
            np.concatenate(forces),
            np.concatenate(prepared.data.forces),
        )

    def _loss(
        self, model: nn.Module, batch: tuple[Any, ...], training: bool, totals: tuple[int, int] | None = None
    ) -> torch.Tensor:
        inputs, ref_energy, ref_forces, shift, n_atoms = batch
        energy, forces = self.potential.energy_forces(model, inputs, training=training)
        return weighted_loss(
            energy + shift, forces, ref_energy, ref_forces, n_atoms, *self.weights, totals, self.config.energy_loss
        )

    def validation_loss(self, model: nn.Module, prepared: Prepared) -> float:
        """Mean loss over validation batches."""
        losses = [
            self._loss(model, batch, training=False).item()
            for batch in self._batches(prepared, range(len(prepared.data)), self.config.eval_batch_size)
        ]
        return float(np.mean(losses))

    # -- reference energies --

    def _fit_energy_correction(self, train: Dataset) -> None:
        """``delta_z`` added per atom of element ``z`` to the model's energy (fixed during training)."""
        mode = self.config.e0s
        if mode == "none":
            return
        if mode == "fit":
            predicted = self.evaluate_energies(self.prepare(train))
            fitted = fit_reference_energies(train, train.energies - predicted)
            self.delta = np.array([fitted.get(z, 0.0) for z in self.elements])
            return
        isolated = read_isolated_atom_energies(mode)  # covers the training data's elements (checked on reading)
        from ase import Atoms

        atoms = [Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in self.elements if z in isolated]
        single = Dataset(atoms, np.zeros(len(atoms)), [np.zeros((1, 3))] * len(atoms))
        model_e0 = dict(zip([int(a.numbers[0]) for a in atoms], self.evaluate_energies(self.prepare(single))))
        self.delta = np.array([isolated[z] - model_e0[z] if z in isolated else 0.0 for z in self.elements])

    def evaluate_energies(self, prepared: Prepared) -> np.ndarray:
        """The base model's energies (without correction) on ``prepared``."""
        out = []
        for batch, *_ in self._batches(prepared, range(len(prepared.data)), self.config.eval_batch_size):
            energy, _ = self.potential.energy_forces(self.potential.model, batch, training=False)
            out.append(energy.detach().cpu().numpy())
        return np.concatenate(out)

    # -- training --

    def run(self) -> dict[str, Any]:
        """Fine-tune; returns the before/after errors (and writes everything under ``output``)."""
        c = self.config
        # everything that needs no model first: options, data, the output directory, the checkpoint
        peft_config = validate_options(c.adapter, c.adapter_options)
        train, valid, test = self._load_data()
        previous_run = self._check_output()
        checkpoint = load_checkpoint(self.output / "checkpoint.pt") if c.resume else None
        if checkpoint is not None:
            self._check_resumable(checkpoint)
        self._checkpoint_written = False
        _ = self.potential  # loads the model
        torch.manual_seed(c.seed)
        self._check_elements(train, valid, test)
        self._prepare_model([train, valid, test])
        self._clear_output(previous_run)  # overwrite: only now that the model loaded and fits the data
        if checkpoint is not None:
            self._check_checkpoint_elements(checkpoint)
            self.delta = np.asarray(checkpoint["delta"])
        else:
            self._fit_energy_correction(train)
        train_p, valid_p = self.prepare(train), self.prepare(valid)
        test_p = self.prepare(test) if test is not None else None
        before = {"valid": self.evaluate(self.potential.model, valid_p)}
        if test_p is not None:
            before["test"] = self.evaluate(self.potential.model, test_p)

        torch.manual_seed(c.seed)
        model = peft_equi.get_peft_model(self.potential.model, peft_config)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=c.lr, amsgrad=c.amsgrad, weight_decay=c.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=c.scheduler_factor, patience=c.scheduler_patience
        )
        ema = _ema(params, c.ema_decay)
        best = Best()
        start_epoch = 0
        if checkpoint is not None:
            start_epoch = self._restore(checkpoint, model, optimizer, scheduler, ema, best)
        trained = self._distributed(model)
        log = MetricsLog(self.output, resume=checkpoint is not None, upto_epoch=start_epoch) if self.rank == 0 else None
        stage_two = c.stage_two_start()
        for epoch in range(start_epoch, c.epochs):
            started = time.perf_counter()
            stage = self._set_stage(epoch, stage_two, optimizer, best)
            train_loss = self._train_epoch(trained, optimizer, ema, params, train_p, epoch)
            with _averaged(ema):
                valid_loss = self.validation_loss(model, valid_p)
                errors = self.evaluate(model, valid_p)
                best.offer(valid_loss, epoch + 1, model)
            if stage == 1:
                scheduler.step(valid_loss)
            if log is not None:
                row = {
                    "epoch": epoch + 1,
                    "stage": stage,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": train_loss,
                    "valid_loss": valid_loss,
                    "time_s": time.perf_counter() - started,
                }
                log.append(row | {f"valid_{k}": v for k, v in errors.summary().items()})
            if (epoch + 1) % c.checkpoint_every == 0 or epoch + 1 == c.epochs:
                self._save_checkpoint(epoch + 1, model, optimizer, scheduler, ema, best)
        kept_epoch = self._keep(model, params, ema, best)
        after = {"valid": self.evaluate(model, valid_p)}
        if test_p is not None:
            after["test"] = self.evaluate(model, test_p)
        result = {
            "before": before,
            "after": after,
            "trainable_parameters": model.num_trainable_parameters(),
            "kept": {"keep": c.keep, "epoch": kept_epoch, "stage_two_from_epoch": _one_based(stage_two)},
        }
        self.model = model  # the trained PeftModel stays usable after the run
        if self.rank == 0:
            self._write_outputs(model, result, log)
        _barrier()
        return result

    def _set_stage(self, epoch: int, stage_two: int | None, optimizer, best: Best) -> int:
        """Loss weights and lr of ``epoch`` (0-based); entering stage two resets the best-model search."""
        c = self.config
        if stage_two is None or epoch < stage_two:
            self.weights = (c.energy_weight, c.forces_weight)
            return 1
        self.weights = (c.swa_energy_weight, c.swa_forces_weight)
        for group in optimizer.param_groups:
            group["lr"] = c.swa_lr
        if epoch == stage_two:
            best.reset()
        return 2

    def _keep(self, model, params, ema, best: Best) -> int:
        """Load the kept weights into ``model``: the best epoch's, or the last (EMA-averaged); its epoch."""
        if self.config.keep == "best" and best.state is not None:
            state = model.adapter_state_dict()
            with torch.no_grad():
                for key, value in best.state.items():
                    state[key].copy_(value)
            return best.epoch
        if ema is not None:
            ema.copy_to(params)
        return self.config.epochs

    def _train_epoch(self, trained, optimizer, ema, params, train_p: Prepared, epoch: int) -> float:
        c = self.config
        order = np.random.default_rng(c.seed + 1000 * (epoch + 1)).permutation(len(train_p.data))
        n_batches = len(order) // c.batch_size  # drop the incomplete last batch
        losses = []
        progress = _progress(range(n_batches), c.progress and self.rank == 0, f"epoch {epoch + 1}/{c.epochs}")
        for b in progress:
            chosen = order[b * c.batch_size : (b + 1) * c.batch_size]
            share = np.array_split(chosen, self.world)[self.rank]
            totals = (len(chosen), sum(len(train_p.data.atoms[i]) for i in chosen))
            optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over processes: scale so that they add up to the whole batch's
            loss = self._loss(trained, self._batch(train_p, share), training=True, totals=totals) * self.world
            batch_loss = _all_reduce_sum(loss.detach() / self.world)
            if not torch.isfinite(batch_loss):
                checkpoint = self.output / "checkpoint.pt"
                kept = (
                    f"The last good checkpoint is {checkpoint}"
                    if self._checkpoint_written or (self.config.resume and checkpoint.is_file())
                    else "No checkpoint was written yet"
                )
                raise TrainingDivergedError(
                    f"loss became {batch_loss.item()} at epoch {epoch + 1}, batch {b + 1}: stopping. {kept} "
                    f"(try a lower lr or float64)"
                )
            loss.backward()
            if c.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(params, c.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update(params)
            losses.append(batch_loss.item())
        return float(np.mean(losses))

    def _distributed(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo" if self.device.type == "cpu" else "nccl")
        if self.config.batch_size % self.world:
            raise PeftEquiError(f"batch_size {self.config.batch_size} is not divisible by {self.world} processes")
        return nn.parallel.DistributedDataParallel(model)

    # -- checkpoints and outputs --

    def _save_checkpoint(self, epoch, model, optimizer, scheduler, ema, best: Best) -> None:
        if self.rank != 0:
            return
        state = {
            "epoch": epoch,
            "adapter": model.adapter_state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "delta": torch.as_tensor(self.delta),
            "best": best.as_dict(),
            "config": self.config.model_dump_json(exclude={"resume"}),
            "inputs": json.dumps(self._input_digests()),
            "elements": torch.as_tensor(self.elements, dtype=torch.long),
            "stage_two_start": -1 if self.config.stage_two_start() is None else self.config.stage_two_start(),
        }
        atomic_save(state, self.output / "checkpoint.pt")
        self._checkpoint_written = True

    def _input_digests(self) -> dict[str, str]:
        """SHA-256 of the files the run reads (model, data, isolated atoms), computed once."""
        if self._digests is None:
            self._digests = {}
            for key in INPUT_FILES:
                value = getattr(self.config, key)
                if value is not None and Path(value).is_file():
                    self._digests[key] = sha256(value)
        return self._digests

    def _check_resumable(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume when an option that changes training differs from the checkpoint's.

        A file read whose digest the checkpoint recorded is compared by content only: changed
        exactly when its digest differs, whatever the path (the same run may resume from another
        working directory, through an absolute or relative path or copied; a file edited in place,
        or a relative path now naming another file, is refused).  Paths are compared only for
        options without a recorded digest (a model given by name).
        """
        saved = json.loads(checkpoint["config"])
        digests = json.loads(checkpoint.get("inputs", "{}"))
        current = self.config.training_options()
        now = self._input_digests()

        def differs(key: str) -> bool:
            return digests[key] != now.get(key) if key in digests else saved.get(key) != current[key]

        changed = sorted(k for k in current if differs(k))
        # with swa and no start_swa, stage two starts at 3/4 of the epochs: more epochs move it
        saved_start, start = int(checkpoint.get("stage_two_start", -1)), self.config.stage_two_start()
        if (
            not {"swa", "start_swa"} & set(changed)
            and saved_start >= 0
            and start is not None
            and saved_start != start
            and int(checkpoint["epoch"]) > min(saved_start, start)
        ):
            changed.append("epochs (it moves the start of stage two: give start_swa)")
        if changed:
            raise ConfigError(f"cannot resume: options changed since the checkpoint: {', '.join(changed)}")

    def _check_checkpoint_elements(self, checkpoint: dict[str, Any]) -> None:
        if "elements" in checkpoint and checkpoint["elements"].tolist() != list(self.elements):
            raise PeftEquiError(
                f"cannot resume: the model was cut to elements {checkpoint['elements'].tolist()} at the checkpoint, "
                f"{list(self.elements)} now (data with other elements, or subset_elements changed?)"
            )

    def _restore(self, checkpoint, model, optimizer, scheduler, ema, best: Best) -> int:
        current_state = model.adapter_state_dict()
        with torch.no_grad():
            for key, value in checkpoint["adapter"].items():
                current_state[key].copy_(value)
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        best.load(checkpoint["best"])
        return int(checkpoint["epoch"])

    def _write_outputs(self, model, result: dict[str, Any], log: MetricsLog | None) -> None:
        model.save_pretrained(self.output / "adapter")
        (self.output / "energy_correction.json").write_text(
            json.dumps({"atomic_numbers": self.elements, "delta_eV": self.delta.tolist()}, indent=2)
        )
        try:
            merged_path = self.potential.save(copy.deepcopy(model).merge_and_unload(), self.output / "merged")
            result["merged_model"] = str(merged_path)
        except NotMergeableError as exc:
            result["merged_model"] = None
            result["not_merged_because"] = str(exc)
        summary = {
            phase: {split: errors.summary() for split, errors in splits.items()}
            for phase, splits in (("before", result["before"]), ("after", result["after"]))
        }
        (self.output / "results.json").write_text(
            json.dumps(summary | {k: v for k, v in result.items() if k not in ("before", "after")}, indent=2)
        )
        if self.config.plots and log is not None and log.rows:
            plot_learning_curves(log.rows, self.output / "learning_curves.png")
            split = "test" if "test" in result["after"] else "valid"
            curves = {
                phase: (result[phase][split].predicted_forces, result[phase][split].reference_forces)
                for phase in ("before", "after")
            }
            plot_force_parity(curves, self.output / "force_parity.png")


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


def _one_based(epochs_before: int | None) -> int | None:
    return None if epochs_before is None else epochs_before + 1


def _ema(params: list[nn.Parameter], decay: float | None):
    if decay is None:
        return None
    from torch_ema import ExponentialMovingAverage

    return ExponentialMovingAverage(params, decay=decay)


def _averaged(ema):
    return ema.average_parameters() if ema is not None else nullcontext()


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, leave=False)


def _all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
    return value


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
