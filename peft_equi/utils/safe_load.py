"""Reading torch files without running code from them: the rule every model loader follows.

``torch.load(weights_only=True)`` rebuilds tensors, containers and plain values (plus the
globals a loader allow-lists, e.g. numpy arrays) and refuses anything else.  A file that
needs more is a pickle of code: :func:`load_torch_file` reads it only with
``trust_pickle=True`` (``--trust-pickle``), and otherwise raises
:class:`~peft_equi.errors.UntrustedPickleError`, one line naming the file and the flag.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from peft_equi.errors import PeftEquiError, UntrustedPickleError, first_line

TRUST_HINT = "pass --trust-pickle (trust_pickle=True) only if you trust its source"


def numpy_globals() -> list[Any]:
    """Allow-list for numpy arrays, dtypes and scalars in a pickle (under numpy 1.x and 2.x names).

    They rebuild arrays from a dtype and raw bytes (object arrays from objects the
    restricted unpickler built): no code runs.
    """
    import numpy as np

    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}  # numpy.dtypes.Float32DType, ...
    allowed: list[Any] = [np.ndarray, np.dtype, *sorted(dtype_classes, key=lambda c: c.__name__)]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    return allowed


def unsafe_globals(path: str | Path, limit: int = 3) -> str:
    """The first globals of the pickle in ``path`` that ``weights_only`` refuses, as text ('' if unknown)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads opcodes, runs nothing
    except Exception:  # not a zip checkpoint (legacy or plain pickle)
        return ""
    more = f", +{len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def refusal(path: str | Path, what: str) -> UntrustedPickleError:
    """The one-line error for a file that would run code when loaded."""
    names = unsafe_globals(path)
    holds = f" (it imports {names})" if names else ""
    return UntrustedPickleError(f"{path}: {what}{holds}: loading it executes code from the file; {TRUST_HINT}")


def load_torch_file(
    path: str | Path,
    *,
    trust_pickle: bool,
    what: str,
    safe_globals: Sequence[Any] = (),
    trusted_context: Callable[[], AbstractContextManager] = contextlib.nullcontext,
) -> Any:
    """``torch.load(path)`` on CPU with ``weights_only=True`` (plus ``safe_globals``).

    A file that needs other globals is unpickled in full only with ``trust_pickle`` (inside
    ``trusted_context``); without it, :class:`UntrustedPickleError` says that ``path`` is
    ``what``.  A file torch cannot read at all (truncated, not a torch file: also with
    ``trust_pickle``) raises :class:`PeftEquiError` naming it.
    """
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global or an opcode
        if not trust_pickle:
            raise refusal(path, what) from exc
    except Exception as exc:  # truncated, not a torch file, ...: the full unpickler may still read it
        if not trust_pickle:
            raise unreadable(path, exc) from exc
    with trusted_context():
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except MemoryError:
            raise
        except Exception as exc:  # not a torch file, truncated, a class this environment lacks, ...
            raise unreadable(path, exc) from exc


def unreadable(path: str | Path, exc: BaseException) -> PeftEquiError:
    """The one-line error for a file torch cannot read at all."""
    return PeftEquiError(f"{path}: cannot read it as a torch file ({first_line(exc)})")
