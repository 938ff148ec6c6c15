"""Shared fixtures: float64 by default (equivariance checks need it) and seeded RNG."""

import pytest
import torch
from mace_models import batch_of, build_mace, molecules

from peft_equi.utils.dtype import torch_default_dtype


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """Every test runs in float64 (equivariance and exactness checks) from seed 0."""
    torch.manual_seed(0)
    with torch_default_dtype(torch.float64):
        yield


@pytest.fixture(scope="module")
def small_mace():
    """A small float64 MACE (H, C, O), built once per module; modules may define their own."""
    with torch_default_dtype(torch.float64):
        yield build_mace("small")


@pytest.fixture(scope="module")
def batch():
    """Two small H/C/O molecules as a float64 MACE batch."""
    with torch_default_dtype(torch.float64):
        yield batch_of(molecules(2))
