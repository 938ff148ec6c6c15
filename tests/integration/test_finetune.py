"""The fine-tuning engine and the CLI on small MACE models: end to end, resume, NaN, bad input, DDP."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from finetune_setup import finetune_config
from paths import ROOT
from typer.testing import CliRunner

from peft_equi.errors import DataError, PeftEquiError
from peft_equi_train import Finetuner, TrainingDivergedError
from peft_equi_train.checkpoint import load_checkpoint
from peft_equi_train.cli import app

runner = CliRunner()


def test_finetune_end_to_end_writes_everything(files, tmp_path):
    result = Finetuner(finetune_config(files, tmp_path / "run", epochs=3)).run()
    run = tmp_path / "run"
    for name in [
        "metrics.csv",
        "results.json",
        "checkpoint.pt",
        "energy_correction.json",
        "merged.model",
        "learning_curves.png",
        "force_parity.png",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ]:
        assert (run / name).is_file(), name
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3
    assert result["after"]["valid"].forces_mae < result["before"]["valid"].forces_mae
    summary = json.loads((run / "results.json").read_text())
    assert set(summary["after"]) == {"valid", "test"} and summary["merged_model"].endswith("merged.model")


def test_resume_gives_identical_results(files, tmp_path):
    straight = Finetuner(finetune_config(files, tmp_path / "a", epochs=4)).run()
    Finetuner(finetune_config(files, tmp_path / "b", epochs=2)).run()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 2
    resumed = Finetuner(finetune_config(files, tmp_path / "b", epochs=4, resume=True)).run()
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert all(torch.equal(a["adapter"][k], b["adapter"][k]) for k in a["adapter"])
    assert resumed["after"]["test"].forces_mae == straight["after"]["test"].forces_mae
    with pytest.raises(PeftEquiError, match="options changed since the checkpoint: lr"):
        Finetuner(finetune_config(files, tmp_path / "b", epochs=5, resume=True, lr=1e-3)).run()


def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(files, tmp_path):
    config = finetune_config(files, tmp_path / "nan", epochs=3)
    finetuner = Finetuner(config)
    calls = {"n": 0}
    original = finetuner.potential.energy_forces

    def poisoned(model, batch, training):
        energy, forces = original(model, batch, training)
        calls["n"] += training
        return (energy * float("nan"), forces) if calls["n"] > 3 else (energy, forces)

    finetuner.potential.energy_forces = poisoned  # 3 training batches per epoch: NaN from epoch 2 on
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2.*checkpoint"):
        finetuner.run()
    assert load_checkpoint(tmp_path / "nan" / "checkpoint.pt")["epoch"] == 1


def test_bad_inputs_are_named(files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.xyz"):
        Finetuner(finetune_config(files, tmp_path / "x", train=files / "missing.xyz")).run()
    with pytest.raises(DataError, match=r"'REF_energy'.*available keys: .*energy"):
        Finetuner(finetune_config(files, tmp_path / "x", energy_key="REF_energy")).run()
    from ase.build import molecule

    nitrogen = molecule("NH3")
    nitrogen.calc = SinglePointCalculator(nitrogen, energy=-1.0, forces=np.zeros((4, 3)))
    write(tmp_path / "nh3.xyz", [nitrogen] * 4)
    with pytest.raises(PeftEquiError, match=r"does not know: N \(Z=7\)"):
        Finetuner(finetune_config(files, tmp_path / "x", test=tmp_path / "nh3.xyz")).run()


def test_cli_commands(files, tmp_path):
    model = str(files / "base.model")
    result = runner.invoke(app, ["adapters"])
    assert result.exit_code == 0 and "mmea" in result.stdout and "mmea-paper" in result.stdout
    result = runner.invoke(app, ["inspect", "--model", model, "--trust-pickle", "--adapter", "mmea"])
    assert result.exit_code == 0 and "interactions.1.linear" in result.stdout and "trainable" in result.stdout
    result = runner.invoke(app, ["inspect", "--model", model])
    assert result.exit_code == 2 and "trust_pickle=True" in result.output

    config = tmp_path / "run.yaml"
    config.write_text(f"model: {model}\ntrust_pickle: true\ntrain: {files / 'data.xyz'}\nepochs: 1\n")
    run = tmp_path / "cli-run"
    args = [
        "finetune",
        "--config",
        str(config),
        "--adapter",
        "elora",
        "--adapter-options",
        "{rank: 2}",
        "--batch-size",
        "4",
        "--valid-fraction",
        "0.25",
        "--output",
        str(run),
        "--no-progress",
        "--no-plots",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| valid | after |" in result.stdout

    result = runner.invoke(
        app, ["evaluate", "--model", model, "--trust-pickle", "--run", str(run), "--data", str(files / "test.xyz")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["structures"] == 8

    result = runner.invoke(
        app, ["merge", "--model", model, "--trust-pickle", "--run", str(run), "--output", str(tmp_path / "merged")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged.model").is_file()

    result = runner.invoke(app, ["finetune", "--config", str(config), "--lr", "-1", "--output", str(run)])
    assert result.exit_code == 2 and "lr: Input should be greater than 0" in result.output


@pytest.mark.parametrize("name", ["mmea", "bitfit", "film"])
def test_every_adapter_runs_through_the_engine(files, tmp_path, name):
    result = Finetuner(finetune_config(files, tmp_path / name, epochs=1, adapter=name, adapter_options={})).run()
    assert result["trainable_parameters"] > 0
    assert np.isfinite(result["after"]["test"].forces_mae)


DDP_SCRIPT = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {tests!r})
from peft_equi_train import FinetuneConfig, Finetuner
config = FinetuneConfig.model_validate_json(Path({config!r}).read_text())
finetuner = Finetuner(config)
finetuner.run()
print(f"process {{finetuner.fabric.global_rank}} of {{finetuner.fabric.world_size}}")
"""


@pytest.mark.slow
def test_two_processes_match_one(files, tmp_path):
    """torchrun with 2 CPU processes (gloo) follows the same trajectory as one process, replay included
    (each process takes its share of the replay batches as of the training batches)."""
    results = {}
    replay = {"replay": [files / "test.xyz"], "replay_ratio": 0.5, "replay_weight": 10.0}
    for n in (1, 2):
        config = finetune_config(files, tmp_path / f"ddp{n}", epochs=2, ema_decay=None, **replay)
        (tmp_path / f"config{n}.json").write_text(config.model_dump_json())
        script = tmp_path / "run.py"
        script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), config=str(tmp_path / f"config{n}.json")))
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", str(script)]
        run = subprocess.run(command, check=True, env=env, capture_output=True, text=True, timeout=600)
        assert all(f"process {rank} of {n}" in run.stdout for rank in range(n)), run.stdout  # Fabric saw torchrun
        results[n] = load_checkpoint(tmp_path / f"ddp{n}" / "checkpoint.pt")["adapter"]
    for key, value in results[1].items():
        torch.testing.assert_close(results[2][key], value, atol=1e-10, rtol=1e-8, msg=key)
    assert any(v.abs().sum() > 0 for k, v in results[1].items() if "lora_B" in k)  # it did train


def test_held_out_rest_of_the_training_file(files, tmp_path):
    result = Finetuner(
        finetune_config(files, tmp_path / "rest", epochs=1, test=None, test_on_rest=True, n_train=12)
    ).run()
    from peft_equi_train.data import read_dataset, select_and_split

    _, _, rest = select_and_split(read_dataset(files / "data.xyz"), 12, 0.25, 0)
    assert len(rest) == 4
    assert np.array_equal(result["after"]["test"].reference_forces, np.concatenate(rest.forces))
    with pytest.raises(PeftEquiError, match="either a test file or test_on_rest"):
        Finetuner(finetune_config(files, tmp_path / "rest2", test_on_rest=True)).run()


def test_cueq_backend_option(files, tmp_path, caplog):
    options = dict(epochs=1, backend="cueq", adapter="mmea-paper", adapter_options={"rank": 4})
    with caplog.at_level(logging.INFO):
        result = Finetuner(finetune_config(files, tmp_path / "cueq", **options)).run()
    assert "naive" in caplog.text  # no GPU kernels here, and the run says so
    assert np.isfinite(result["after"]["test"].forces_mae)
