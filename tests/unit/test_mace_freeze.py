"""The ``freeze`` preset trains exactly what mace's ``--freeze N`` leaves trainable."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
from mace_models import build_mace

import peft_equi


@pytest.fixture(scope="module")
def small_mace():
    return build_mace("small")


def _mace_trainable(model, level: int) -> set[str]:
    """Names mace's own ``get_params_options(args.freeze=level)`` leaves with requires_grad."""
    from mace.tools.scripts_utils import get_params_options

    model = copy.deepcopy(model)
    args = argparse.Namespace(
        freeze=level, lr=0.01, weight_decay=0.0, lr_params_factors=json.dumps({}), amsgrad=True, beta=0.9
    )
    get_params_options(args, model)
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("level", [1, 3, 5, 6])
def test_freeze_matches_mace(small_mace, level):
    peft = peft_equi.get_peft_model(copy.deepcopy(small_mace), "freeze", level=level)
    ours = {name.removeprefix("base_model.") for name, p in peft.named_parameters() if p.requires_grad}
    assert ours == _mace_trainable(small_mace, level)
    assert ours  # something is trained at every accepted level


@pytest.mark.parametrize("level", [0, 7])
def test_freeze_refuses_levels_that_train_everything_or_nothing(small_mace, level):
    with pytest.raises(ValueError, match="freeze level must be 1-6"):
        peft_equi.get_peft_model(copy.deepcopy(small_mace), "freeze", level=level)
