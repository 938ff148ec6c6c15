"""benchmarks/pretrain_organic.py end to end on a tiny generated set: mace_run_train, resume, model files."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from paths import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import pretrain_organic
from test_organic_data import run_generator

from peft_equi.families.mace.loading import load_mace_model


def test_mace_run_train_gets_the_threads_asked_for():
    import os

    assert os.environ["OMP_NUM_THREADS"] == "1"  # set by make_organic_xtb on import, for tblite
    env = pretrain_organic.mace_environment(2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.slow
def test_pretraining_writes_both_model_files_and_resumes(tmp_path):
    data, out, models = tmp_path / "data", tmp_path / "pretrain", tmp_path / "models"
    tiny = ["--limit", "6", "--configs-per-temperature", "3", "--stride", "3", "--equilibration-steps", "2"]
    run_generator("--out-dir", str(data), "--workers", "1", "--temperatures", "300", "600", *tiny)
    run = ["--data", str(data), "--width", "4", "--output", str(out), "--models-dir", str(models), "--threads", "1"]
    pretrain_organic.main([*run, "--epochs", "1"])
    first = json.loads((out / "results.json").read_text())
    pretrain_organic.main([*run, "--epochs", "2"])  # continues from the checkpoint of epoch 1
    second = json.loads((out / "results.json").read_text())
    log = (out / "log.txt").read_text()
    second_run = log.split("\n# ")[-1]
    assert log.count("\n# ") == 2 and "--epochs 2" in second_run.splitlines()[0]
    resumed_from = second_run.split("Started training")[0]  # before training starts, the checkpoint is loaded
    assert "Loading checkpoint" in resumed_from and "epoch-0" in resumed_from
    assert second["wall_time_s_total"] > first["wall_time_s_total"]
    pickled = load_mace_model(models / "mace-organic-xtb.model", trust_pickle=True)
    state = load_mace_model(models / "mace-organic-xtb.pt")  # pickle-free: no trust needed
    assert all(torch.equal(a, b) for a, b in zip(pickled.state_dict().values(), state.state_dict().values()))
    assert second["architecture"]["hidden_irreps"] == "4x0e+4x1o"
    for split in ("valid", "test"):
        assert second["held_out"][split]["structures"] == 1 * 2 * 3  # 1 molecule x 2 temperatures x 3 snapshots
    assert "| test |" in (out / "results.md").read_text()

    # stage two: resumed at a lower learning rate (written into mace's checkpoint), other loss weights
    pretrain_organic.main([*run, "--epochs", "3", "--stage-two-lr", "0.001", "--energy-weight", "10"])
    third_run = (out / "log.txt").read_text().split("\n# pretrain_organic.py")[-1]
    assert "second stage: learning rate 0.01 -> 0.001" in third_run
    assert "WeightedEnergyForcesLoss(energy_weight=10.000, forces_weight=100.000)" in third_run
    checkpoint = pretrain_organic._latest_checkpoint(out / "checkpoints")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {group["lr"] for group in saved["optimizer"]["param_groups"]} == {0.001}
    passes = json.loads((out / "results.json").read_text())["passes"]  # the learning curve, from mace's logs
    assert len(second["passes"]) > len(first["passes"]) >= 1 and len(passes) > len(second["passes"])
    assert passes[-1]["lr"] == 0.001 and passes[-1]["energy_weight"] == 10.0
    assert all(row["lr"] == 0.01 and row["energy_weight"] == 1.0 for row in second["passes"])
    assert "| 0.001 | 10 / 100 |" in (out / "results.md").read_text()

    (models / "mace-organic-xtb.pt").unlink()  # --export-only writes the files again from mace's model, no training
    pretrain_organic.main([*run, "--export-only"])
    exported = json.loads((out / "results.json").read_text())
    assert exported["passes"] == passes and (models / "mace-organic-xtb.pt").is_file()
    assert exported["training"]["export_only"] is True
