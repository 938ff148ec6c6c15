"""The train extra is listed twice (pyproject.toml for pip, peft_equi_train/extra.py for the one-line
error): the two lists must name the same distributions, and each module must belong to its distribution."""

from __future__ import annotations

import re
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from peft_equi_train.extra import TRAIN_EXTRA

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[2]


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_pyproject_and_the_error_list_name_the_same_distributions():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert {_name(Requirement(line).name) for line in extra} == {_name(d) for d in TRAIN_EXTRA.values()}


def test_each_module_is_provided_by_its_distribution():
    provided = packages_distributions()
    for module, distribution in TRAIN_EXTRA.items():
        assert _name(distribution) in {_name(d) for d in provided.get(module, [])}, module
