"""The examples in the docstrings of peft_equi and peft_equi_train run (``>>>`` lines, also in code blocks)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from paths import ROOT

MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for package in ("peft_equi", "peft_equi_train")
    for path in (ROOT / package).rglob("*.py")
    if ">>> " in path.read_text(encoding="utf-8")
)


def test_the_docstring_examples_are_found():
    assert {"peft_equi", "peft_equi.testing", "peft_equi.tuner.model"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0
