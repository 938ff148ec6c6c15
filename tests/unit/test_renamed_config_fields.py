"""Adapters saved before PeftConfig's fields train/train_buffers were renamed still load their config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import peft_equi
from peft_equi.tuner.save_and_load import RENAMED_FIELDS, adapter_config

ROOT = Path(__file__).resolve().parents[2]
#: an adapter the engine saved before the rename (committed with its benchmark)
SAVED = ROOT / "benchmarks/results/engine-speed/runs/ours-0/adapter/adapter_config.json"


def test_a_committed_adapter_saved_under_the_old_names_loads_its_config():
    meta = json.loads(SAVED.read_text())
    assert set(RENAMED_FIELDS) <= set(meta["config"]), "the file no longer shows the old names"
    config = adapter_config(meta, SAVED.parent)
    assert config.fully_trained == meta["config"]["train"]
    assert config.fully_trained_buffers == meta["config"]["train_buffers"]


def test_old_and_new_name_together_are_refused(tmp_path):
    meta = {"config": {**json.loads(SAVED.read_text())["config"], "fully_trained": ["*"]}}
    with pytest.raises(peft_equi.AdapterLoadError, match="both 'train' and its current name 'fully_trained'"):
        adapter_config(meta, tmp_path)
