"""Shared fixtures: float64 by default (equivariance checks need it) and seeded RNG.

Under pytest-xdist (``make test`` runs ``pytest -n auto``) each worker gets an equal share of the cores
for torch's intra-op threads, so the workers do not oversubscribe the machine.
"""

import logging
import os

import pytest
import torch
from mace_models import batch_of, build_mace, molecules

from peft_equi.utils.dtype import torch_default_dtype

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """Every test runs in float64 (equivariance and exactness checks) from seed 0."""
    torch.manual_seed(0)
    with torch_default_dtype(torch.float64):
        yield


@pytest.fixture(autouse=True)
def _logger_levels():
    """The CLI sets the levels of the project's loggers (``--quiet``): each test leaves them as it found them."""
    loggers = [logging.getLogger(name) for name in ("peft_equi", "peft_equi_train")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


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
