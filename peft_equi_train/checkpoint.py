"""Checkpoints: written atomically (a temporary name in the same directory, then renamed), read with
``weights_only``, and checked before a run resumes from one (options, input files by content, elements)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from peft_equi.errors import ConfigError, PeftEquiError, UntrustedPickleError, first_line
from peft_equi.utils.files import atomic_write, sha256
from peft_equi.utils.safe_load import unsafe_globals


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` that never leaves a half-written ``path`` (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by the engine (plain tensors and numbers: loads with ``weights_only=True``).

    A file that pickles anything else is refused whatever ``trust_pickle`` says: it was not
    written by the engine.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # never unpickled in full: the engine writes tensors and numbers only
        names = unsafe_globals(path)
        raise UntrustedPickleError(
            f"{path}: not a peft-equi checkpoint: it pickles code{f' ({names})' if names else ''} and loading it "
            "would execute it; refused (--trust-pickle does not apply to checkpoints, which hold only tensors "
            "and numbers)"
        ) from None
    except Exception as exc:  # truncated or not a torch file
        raise PeftEquiError(f"{path}: cannot read the checkpoint ({first_line(exc)})") from None


#: Options naming files that are read: compared by content when resuming.
INPUT_FILES = ("model", "train", "valid", "e0s")
#: Options naming lists of files that are read (compared by the contents of each, in order).
INPUT_FILE_LISTS = ("retain", "replay")


def input_digests(config) -> dict[str, str]:
    """SHA-256 of the files a run of ``config`` reads (model, data, isolated atoms, retain and replay files)."""
    digests = {}
    for key in INPUT_FILES:
        value = getattr(config, key)
        if value is not None and Path(value).is_file():
            digests[key] = sha256(value)
    for key in INPUT_FILE_LISTS:
        paths = getattr(config, key)
        if paths and all(Path(p).is_file() for p in paths):
            digests[key] = ",".join(sha256(p) for p in paths)
    return digests


def check_resumable(config, checkpoint: dict[str, Any], digests: dict[str, str]) -> None:
    """Refuse to resume when an option that changes training differs from the checkpoint's.

    A file read whose digest the checkpoint recorded is compared by content only (``digests``:
    today's, from :func:`input_digests`): changed exactly when its digest differs, whatever the
    path (the same run may resume from another working directory, through an absolute or
    relative path or copied; a file edited in place, or a relative path now naming another
    file, is refused).  Paths are compared only for options without a recorded digest (a model
    given by name).
    """
    saved = json.loads(checkpoint["config"])
    recorded = json.loads(checkpoint.get("inputs", "{}"))
    current = config.training_options()

    def differs(key: str) -> bool:
        return recorded[key] != digests.get(key) if key in recorded else saved.get(key) != current[key]

    done = int(checkpoint["epoch"])
    if config.epochs < done:
        raise ConfigError(
            f"cannot resume: the checkpoint has done {done} epochs, more than epochs ({config.epochs}); "
            f"give epochs >= {done} (a run is extended, never cut short)"
        )
    changed = sorted(k for k in current if differs(k))
    # with swa and no start_swa, stage two starts at 3/4 of the epochs: more epochs move it
    saved_start, start = int(checkpoint.get("stage_two_start", -1)), config.stage_two_start()
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


def check_elements(checkpoint: dict[str, Any], elements: list[int]) -> None:
    """Refuse to resume when the model was cut to other elements than now."""
    if "elements" in checkpoint and checkpoint["elements"].tolist() != list(elements):
        raise PeftEquiError(
            f"cannot resume: the model was cut to elements {checkpoint['elements'].tolist()} at the checkpoint, "
            f"{list(elements)} now (data with other elements, or subset_elements changed?)"
        )


def run_state(config, energy_shift, elements: list[int], digests: dict[str, str]) -> dict[str, Any]:
    """What a checkpoint records about the run besides the training state (see :func:`checkpoint_state`)."""
    start = config.stage_two_start()
    return {
        "delta": torch.as_tensor(energy_shift),  # the key of earlier checkpoints
        "config": config.model_dump_json(exclude={"resume"}),
        "inputs": json.dumps(digests),
        "elements": torch.as_tensor(elements, dtype=torch.long),
        "stage_two_start": -1 if start is None else start,
    }


def checkpoint_state(training: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint: the training state (epoch, adapter, optimizer, scheduler, ema, best, stage one's best) and
    the run's :func:`run_state`, in the engine's key order."""
    state = training | run
    order = ("epoch", "adapter", "optimizer", "scheduler", "ema", "delta", "best", "stage_one_best", "config")
    order += ("inputs", "elements")
    return {key: state[key] for key in order} | {"stage_two_start": state["stage_two_start"]}
