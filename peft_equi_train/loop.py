"""The training loop on Lightning Fabric: Adam/amsgrad, ReduceLROnPlateau, EMA, clipping, stage two, checkpoints.

Stage two (``swa``) follows ``mace_run_train --swa``: from epoch ``start_swa`` on, the
learning rate is ``swa_lr`` (mace's ``SWALR`` with a one-epoch anneal reaches it in the first
stage-two epoch), ReduceLROnPlateau stops, the loss takes the ``swa_*`` weights, and the
best-model search starts anew (validation losses of the two stages are not comparable).
mace also keeps an ``AveragedModel`` that it never evaluates or saves; we do not.

Data parallelism: :func:`make_fabric` gives a single-device Fabric, or, under ``torchrun``
(Fabric detects its environment), a DDP Fabric over all its processes.  Every process takes
an equal share of each batch (:class:`~peft_equi_train.loader.ShuffledShares`), scales its
share's loss so that the shares add up to the whole batch's loss, and DDP averages the
gradients: ``torchrun --nproc_per_node 2`` follows the same trajectory as one process.
Floating-point precision is the engine's own (``dtype``): Fabric runs with its no-op
``32-true`` plugin, whose ``64-true`` sibling would cast outputs to the default dtype.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_equi.errors import PeftEquiError, first_line
from peft_equi.families.base import Potential
from peft_equi.tuner.state_dict import set_peft_model_state_dict
from peft_equi_train.checkpoint import atomic_save, checkpoint_state
from peft_equi_train.config import FinetuneConfig
from peft_equi_train.evaluation import batch_loss, evaluate, validate
from peft_equi_train.loader import Collate, GraphDataset, train_loader
from peft_equi_train.logs import MetricsLog
from peft_equi_train.metrics import SUMMARY_KEYS, ErrorMetrics

log = logging.getLogger(__name__)


class TrainingDivergedError(PeftEquiError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def usable_device(device: str) -> torch.device:
    """``device`` as a ``torch.device``, checked by allocating on it: an unknown name (``gpu7``) or a device
    this machine lacks (``cuda`` without a GPU, ``cuda:5`` with one) is a one-line :class:`PeftEquiError`."""
    try:
        kind = torch.device(device)
        torch.empty(0, device=kind)
    except Exception as exc:  # torch raises several kinds for a device it cannot use
        raise unusable_device(device, exc) from None
    return kind


def unusable_device(device: str, exc: BaseException) -> PeftEquiError:
    """The one-line error for a device that cannot be used."""
    return PeftEquiError(f"device {device!r} cannot be used: {first_line(exc)}")


def make_fabric(device: str):
    """A Fabric on ``device`` (``cpu``, ``cuda``, ``cuda:1``); under torchrun, DDP over all its processes."""
    from lightning.fabric import Fabric

    try:
        kind = torch.device(device)
        if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
            world = int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            return Fabric(accelerator=kind.type, devices=local, num_nodes=world // local, strategy="ddp")
        devices = [kind.index] if kind.index is not None else 1
        return Fabric(accelerator=kind.type, devices=devices, precision="32-true")
    except Exception as exc:  # torch and Lightning raise several kinds for a device they cannot use
        raise unusable_device(device, exc) from None


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
class State:
    """What training changes: the PeftModel (unwrapped), its trainable parameters, the optimiser and friends."""

    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    best: Best = field(default_factory=Best)
    stage_one_best: Best | None = None  # the best model of stage one, once stage two has begun
    epoch: int = 0  # epochs done

    def as_dict(self) -> dict[str, Any]:
        """The training part of a checkpoint."""
        return {
            "epoch": self.epoch,
            "adapter": self.model.adapter_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": self.best.as_dict(),
            "stage_one_best": self.stage_one_best.as_dict() if self.stage_one_best is not None else None,
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint's training part."""
        _copy_into(self.model, checkpoint["adapter"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.best.load(checkpoint["best"])
        if checkpoint["stage_one_best"] is not None:
            self.stage_one_best = Best()
            self.stage_one_best.load(checkpoint["stage_one_best"])
        self.epoch = int(checkpoint["epoch"])


def new_state(config: FinetuneConfig, model: nn.Module) -> State:
    """Adam (amsgrad), ReduceLROnPlateau and the EMA of ``model``'s trainable parameters."""
    c = config
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=c.lr, amsgrad=c.amsgrad, weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=c.scheduler_factor, patience=c.scheduler_patience
    )
    ema = None
    if c.ema_decay is not None:
        from torch_ema import ExponentialMovingAverage

        ema = ExponentialMovingAverage(params, decay=c.ema_decay)
    return State(model, params, optimizer, scheduler, ema)


class TrainingLoop:
    """Trains a PeftModel of ``potential`` with ``fabric``; the first process writes checkpoints and metrics.csv.

    ``run_state`` (what checkpoints record besides the training state) and ``resumed`` (a
    checkpoint existed when the run started) come from the engine.
    """

    def __init__(self, config: FinetuneConfig, fabric, output: Path) -> None:
        self.config, self.fabric, self.output = config, fabric, output
        self.weights = (config.energy_weight, config.forces_weight)  # the current stage's loss weights
        self.energy_loss = config.energy_loss  # and its energy error (total or per atom)
        self.potential: Potential | None = None
        self.metrics: MetricsLog | None = None
        self.checkpoint_written = False
        self.resumed = False
        self.keeps_checkpoints = True  # False when a failed run's directory is removed (overwrite)
        self.run_state: dict[str, Any] = {}

    @property
    def collate(self) -> Collate:
        return Collate(self.potential, self.fabric.device, self.config.torch_dtype())

    def fit(
        self,
        potential: Potential,
        state: State,
        train: GraphDataset,
        valid: GraphDataset,
        retain: dict[str, GraphDataset] | None = None,
        replay: GraphDataset | None = None,
    ) -> int:
        """Train from ``state.epoch`` to ``epochs``; load the kept weights into ``state.model``; the kept epoch.

        The ``retain`` splits (:mod:`~peft_equi_train.foundation_data`) are evaluated every
        ``retain_every`` epochs and at the last, with the validation weights; other epochs
        record NaN in their columns.  ``replay`` structures join every training step
        (``replay_batch_size`` of them, drawn in a seeded order per epoch: resumable).
        """
        c, fabric = self.config, self.fabric
        self.potential = potential
        trained, optimizer = fabric.setup(state.model, state.optimizer)
        loader = train_loader(train, self.collate, c.batch_size, c.seed, fabric.global_rank, fabric.world_size)
        replays = None
        if replay is not None:
            rank, world = fabric.global_rank, fabric.world_size
            replays = train_loader(replay, self.collate, c.replay_batch_size(), c.seed + 1, rank, world)
        if fabric.is_global_zero:
            self.metrics = MetricsLog(self.output, resume=self.resumed, upto_epoch=state.epoch)
        stage_two = c.stage_two_start()
        for epoch in range(state.epoch, c.epochs):
            started = time.perf_counter()
            stage = self.set_stage(epoch, stage_two, state)
            loader.sampler.use_epoch(epoch)
            train_loss = self.train_epoch((trained, optimizer), state, loader, epoch, replays)
            with state.ema.average_parameters() if state.ema is not None else nullcontext():
                valid_loss, errors = self.validate(state.model, valid)
                if not np.isfinite(valid_loss):
                    raise TrainingDivergedError(
                        f"validation loss became {valid_loss} at epoch {epoch + 1}: stopping, nothing kept. "
                        f"{self._kept_checkpoint()} (try a lower lr or float64)"
                    )
                retained = self.retention(state.model, retain or {}, epoch)
                state.best.offer(valid_loss, epoch + 1, state.model)
            if stage == 1:
                state.scheduler.step(valid_loss)
            state.epoch = epoch + 1
            row = {"epoch": epoch + 1, "stage": stage, "lr": state.optimizer.param_groups[0]["lr"]}
            row |= {"train_loss": train_loss, "valid_loss": valid_loss, "time_s": time.perf_counter() - started}
            self._record(row | {f"valid_{k}": v for k, v in errors.summary().items()} | retained)
            if (epoch + 1) % c.checkpoint_every == 0 or epoch + 1 == c.epochs:
                self.save_checkpoint(state)
        return self.keep(state)

    def retention(self, model: nn.Module, retain: dict[str, GraphDataset], epoch: int) -> dict[str, float]:
        """``<split>_<metric>`` columns of the retain splits at ``epoch`` (0-based); NaN between evaluations."""
        c = self.config
        due = (epoch + 1) % c.retain_every == 0 or epoch + 1 == c.epochs
        columns = {}
        for name, data in retain.items():
            if due:
                errors = evaluate(self.potential, model, data, batch_size=c.eval_batch_size, collate=self.collate)
                columns |= {f"{name}_{k}": v for k, v in errors.summary().items()}
            else:
                columns |= {f"{name}_{k}": float("nan") for k in SUMMARY_KEYS}
        return columns

    def set_stage(self, epoch: int, stage_two: int | None, state: State) -> int:
        """Loss weights and lr of ``epoch`` (0-based); entering stage two resets the best-model search."""
        c = self.config
        if stage_two is None or epoch < stage_two:
            self.weights, self.energy_loss = (c.energy_weight, c.forces_weight), c.energy_loss
            return 1
        self.weights, self.energy_loss = (c.swa_energy_weight, c.swa_forces_weight), c.swa_energy_loss
        for group in state.optimizer.param_groups:
            group["lr"] = c.swa_lr
        if epoch == stage_two:
            state.stage_one_best = copy.copy(state.best)  # tested too, as mace tests both stages' best models
            state.best.reset()
        return 2

    def train_epoch(self, wrapped: tuple[nn.Module, Any], state: State, loader, epoch: int, replays=None) -> float:
        """One pass over the training batches (each with a replay batch when replaying); the mean loss."""
        c, fabric = self.config, self.fabric
        batches = loader
        if c.progress and fabric.is_global_zero:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False)
        replayed = _cycle(replays, epoch) if replays is not None else iter(lambda: None, 0)
        losses = [self.step(wrapped, state, (batch, next(replayed)), epoch, b) for b, batch in enumerate(batches)]
        return float(np.mean(losses))

    def step(self, wrapped: tuple[nn.Module, Any], state: State, batches, epoch: int, index: int) -> float:
        """One optimisation step on this process's share of a batch (and of its replay batch, when given);
        the whole batch's loss, the replay loss times ``replay_weight`` added."""
        fabric, (trained, optimizer) = self.fabric, wrapped
        batch, replayed = batches
        optimizer.zero_grad(set_to_none=True)
        loss = self._batch_loss(trained, batch)
        if replayed is not None:
            loss = loss + self.config.replay_weight * self._batch_loss(trained, replayed)
        whole = fabric.all_reduce(loss.detach(), reduce_op="sum")  # the shares add up to the batch's loss
        if not torch.isfinite(whole):
            raise TrainingDivergedError(
                f"loss became {whole.item()} at epoch {epoch + 1}, batch {index + 1}: stopping. "
                f"{self._kept_checkpoint()} (try a lower lr or float64)"
            )
        fabric.backward(loss * fabric.world_size)  # DDP averages gradients over processes: undo it
        if self.config.clip_grad is not None:
            fabric.clip_gradients(trained, optimizer, max_norm=self.config.clip_grad, error_if_nonfinite=False)
        optimizer.step()
        if state.ema is not None:
            state.ema.update(state.params)
        return whole.item()

    def _batch_loss(self, trained: nn.Module, batch) -> torch.Tensor:
        """This process's share of the loss of a batch, normalised by the whole batch's structures and atoms."""
        share = torch.tensor([len(batch.energy), len(batch.forces)], dtype=torch.float64, device=self.fabric.device)
        totals = tuple(int(v) for v in self.fabric.all_reduce(share, reduce_op="sum").tolist())
        return batch_loss(self.potential, trained, batch, self.weights, self.energy_loss, True, totals)

    def validate(self, model: nn.Module, prepared: GraphDataset) -> tuple[float, ErrorMetrics]:
        """Mean loss over validation batches (the current stage's weights) and the errors, in one pass."""
        size = self.config.eval_batch_size
        return validate(self.potential, model, prepared, self.weights, self.energy_loss, size, self.collate)

    def keep(self, state: State) -> int:
        """Load the kept weights into the model: the best epoch's, or the last (EMA-averaged); its epoch."""
        if self.config.keep == "best" and state.best.state is not None:
            _copy_into(state.model, state.best.state)
            return state.best.epoch
        if state.ema is not None:
            state.ema.copy_to(state.params)
        return self.config.epochs

    def save_checkpoint(self, state: State) -> None:
        """``checkpoint.pt``, written atomically by the first process."""
        if self.fabric.is_global_zero:
            atomic_save(checkpoint_state(state.as_dict(), self.run_state), self.output / "checkpoint.pt")
            self.checkpoint_written = True

    def _kept_checkpoint(self) -> str:
        if not self.keeps_checkpoints:
            return "The previous run in the output directory is kept as it was (overwrite)"
        checkpoint = self.output / "checkpoint.pt"
        if self.checkpoint_written or (self.resumed and checkpoint.is_file()):
            return f"The last good checkpoint is {checkpoint}"
        return "No checkpoint was written yet"

    def _record(self, row: dict[str, Any]) -> None:
        if self.metrics is None:
            return
        self.metrics.append(row)
        retention = "".join(
            f"; {key.removesuffix('_forces_mae_meV_per_A')} F MAE {value:.1f} meV/A"
            for key, value in row.items()
            if key.startswith("retain_") and key.endswith("_forces_mae_meV_per_A") and np.isfinite(value)
        )
        log.info(
            "epoch %d/%d (stage %d): train loss %.4g, valid loss %.4g, valid E MAE %.1f meV, F MAE %.1f meV/A%s",
            row["epoch"], self.config.epochs, row["stage"], row["train_loss"], row["valid_loss"],
            row["valid_energy_mae_meV"], row["valid_forces_mae_meV_per_A"], retention,
        )  # fmt: skip


def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    set_peft_model_state_dict(model, tensors, what="the checkpoint's adapter tensors")


def _cycle(loader, epoch: int):
    """Replay batches without end: passes over ``loader`` in the orders of ``epoch``'s own seeds (resumable)."""
    passes = 0
    while True:
        loader.sampler.use_epoch(epoch * 1_000_003 + passes)
        yield from loader
        passes += 1
