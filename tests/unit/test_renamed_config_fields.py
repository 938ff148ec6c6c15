"""Adapters saved before PeftConfig's fields train/train_buffers were renamed still load their config."""

from __future__ import annotations

import pytest

import peft_equi
from peft_equi.tuner.save_and_load import RENAMED_FIELDS, adapter_config

#: the ``config`` of an adapter_config.json the engine wrote before the rename (a run of
#: benchmarks/engine_speed.py, full fine-tuning; copied here as saved)
SAVED_BEFORE = {
    "rules": [],
    "exclude": [],
    "train": ["*"],
    "train_buffers": ["*bessel_weights"],
    "preset": "full",
}


def test_an_adapter_saved_under_the_old_names_loads_its_config(tmp_path):
    assert set(RENAMED_FIELDS) <= set(SAVED_BEFORE)
    config = adapter_config({"config": SAVED_BEFORE}, tmp_path)
    assert config.fully_trained == ["*"]
    assert config.fully_trained_buffers == ["*bessel_weights"]


def test_old_and_new_name_together_are_refused(tmp_path):
    meta = {"config": {**SAVED_BEFORE, "fully_trained": ["*"]}}
    with pytest.raises(peft_equi.AdapterLoadError, match="both 'train' and its current name 'fully_trained'"):
        adapter_config(meta, tmp_path)
