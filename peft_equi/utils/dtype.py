"""The one way the library changes torch's default dtype: for a block, then back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.set_default_dtype(dtype)`` inside the block (``None``: unchanged), the previous one restored after.

    The previous default is restored even when the block itself changes it (cuequivariance's
    and mace's converters set it process-wide) or raises.
    """
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
