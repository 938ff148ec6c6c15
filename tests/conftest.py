"""Shared fixtures: float64 by default (equivariance checks need it) and seeded RNG."""

import pytest
import torch
from mace_models import batch_of, build_mace, molecules


@pytest.fixture(autouse=True)
def _float64_and_seed():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def small_mace():
    """A small float64 MACE (H, C, O), built once per module; modules may define their own."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield build_mace("small")
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def batch():
    """Two small H/C/O molecules as a float64 MACE batch."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield batch_of(molecules(2))
    finally:
        torch.set_default_dtype(previous)
