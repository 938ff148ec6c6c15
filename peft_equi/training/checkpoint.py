"""Atomic checkpoint files: written to a temporary name in the same directory, then renamed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from peft_equi.errors import PeftEquiError, UntrustedPickleError, first_line
from peft_equi.utils.files import atomic_write
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
