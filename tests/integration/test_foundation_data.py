"""Retention: the engine measures forgetting on retain files against the foundation's labels."""

from __future__ import annotations

import csv
import math

import pytest
from finetune_setup import finetune_config

from peft_equi.errors import ConfigError, DataError
from peft_equi.families.base import load_potential
from peft_equi_train import FinetuneConfig, Finetuner
from peft_equi_train.data import read_dataset
from peft_equi_train.evaluation import evaluate
from peft_equi_train.foundation_data import pseudo_labelled, read_structures


@pytest.mark.slow
def test_pseudo_label_retention_equals_a_direct_evaluation(files, tmp_path):
    config = finetune_config(files, tmp_path / "run", epochs=3, retain=[files / "test.xyz"], retain_every=2)
    finetuner = Finetuner(config)
    result = finetuner.run()
    before, after = result["before"]["retain_test"], result["after"]["retain_test"]
    assert before.forces_mae < 1e-9 and before.energy_mae < 1e-6  # the foundation against its own predictions
    assert after.forces_mae > 1e-2  # fine-tuning moved the model away from the foundation

    # directly: the foundation, loaded anew, labels the structures; the fine-tuned model is evaluated on them
    base = load_potential(str(files / "base.model"), trust_pickle=True)
    labelled = pseudo_labelled(base, base.model, read_structures(files / "test.xyz"), batch_size=3)
    direct = evaluate(finetuner.potential, finetuner.model, labelled, batch_size=5)
    assert after.forces_mae == pytest.approx(direct.forces_mae, rel=1e-9)
    assert after.energy_mae == pytest.approx(direct.energy_mae, rel=1e-9, abs=1e-9)

    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    column = [float(row["retain_test_forces_mae_meV_per_A"]) for row in rows]
    assert math.isnan(column[0]) and column[1] > 0 and column[2] > 0  # every 2nd epoch, and the last
    assert (tmp_path / "run" / "learning_curves.png").is_file()


@pytest.mark.slow
def test_file_labels_are_compared_without_the_energy_correction(files, tmp_path):
    config = finetune_config(files, tmp_path / "run", epochs=1, retain=[files / "test.xyz"], retain_labels="file")
    result = Finetuner(config).run()
    base = load_potential(str(files / "base.model"), trust_pickle=True)
    direct = evaluate(base, base.model, read_dataset(files / "test.xyz"), batch_size=3)  # no energy shift
    assert result["before"]["retain_test"].energy_mae == pytest.approx(direct.energy_mae, rel=1e-9)
    assert result["before"]["retain_test"].forces_mae == pytest.approx(direct.forces_mae, rel=1e-9)
    assert result["before"]["test"].energy_mae != pytest.approx(direct.energy_mae, rel=1e-3)  # test is corrected


def test_retain_options_from_the_command_line_and_bad_files(files, tmp_path):
    options = {"model": "m.model", "train": files / "data.xyz"}
    config = FinetuneConfig.checked(options | {"retain": f"{files / 'test.xyz'}, {files / 'data.xyz'}"})
    assert config.retain == [files / "test.xyz", files / "data.xyz"]
    absent = str(tmp_path / "absent.model")
    missing = finetune_config(files, tmp_path / "run", model=absent, retain=[tmp_path / "x.xyz"])
    with pytest.raises(DataError, match=r"x\.xyz: retain file not found"):  # before the (missing) model is loaded
        Finetuner(missing).run()
    twice = finetune_config(files, tmp_path / "run", retain=[files / "test.xyz", tmp_path / "test.xyz"])
    (tmp_path / "test.xyz").write_text((files / "test.xyz").read_text())
    with pytest.raises(DataError, match="both be reported as retain_test"):
        Finetuner(twice).run()


@pytest.mark.slow
def test_replay_with_ratio_zero_is_no_replay_and_replay_keeps_the_foundation(files, tmp_path):
    common = {"epochs": 2, "retain": [files / "test.xyz"], "plots": False}
    plain = Finetuner(finetune_config(files, tmp_path / "plain", **common)).run()
    zero = Finetuner(finetune_config(files, tmp_path / "zero", replay=[files / "test.xyz"], replay_ratio=0, **common))
    assert zero.run()["after"]["valid"].forces_mae == plain["after"]["valid"].forces_mae  # bit for bit
    assert (tmp_path / "zero" / "metrics.csv").read_text().split("\n")[0] == (
        (tmp_path / "plain" / "metrics.csv").read_text().split("\n")[0]
    )
    # the drift here is below 1 meV/A while the training errors are ~100x larger: the replay loss needs weight
    replay = {"replay": [files / "test.xyz"], "replay_weight": 1e4}
    replayed = Finetuner(finetune_config(files, tmp_path / "replay", **replay, **common)).run()
    drift = {name: run["after"]["retain_test"].forces_mae for name, run in (("plain", plain), ("replay", replayed))}
    assert drift["replay"] < drift["plain"], drift  # pseudo-label replay holds the model to the foundation there


@pytest.mark.slow
def test_replay_resumes_to_the_straight_run(files, tmp_path):
    replay = tmp_path / "replay.xyz"
    replay.write_text((files / "test.xyz").read_text())
    options = {"replay": [replay], "replay_ratio": 0.5, "plots": False}
    straight = Finetuner(finetune_config(files, tmp_path / "straight", epochs=2, **options)).run()
    Finetuner(finetune_config(files, tmp_path / "resumed", epochs=1, **options)).run()
    resumed = Finetuner(finetune_config(files, tmp_path / "resumed", epochs=2, resume=True, **options)).run()
    assert resumed["after"]["valid"].forces_mae == straight["after"]["valid"].forces_mae
    assert resumed["after"]["valid"].energy_mae == straight["after"]["valid"].energy_mae
    replay.write_text((files / "data.xyz").read_text())  # other replay data at the same path: not the same run
    with pytest.raises(ConfigError, match="options changed since the checkpoint: replay"):
        Finetuner(finetune_config(files, tmp_path / "resumed", epochs=3, resume=True, **options)).run()


def test_replay_options_and_batch_size(files):
    options = {"model": "m.model", "train": files / "data.xyz", "replay": f"{files / 'test.xyz'}"}
    config = FinetuneConfig.checked(options)
    assert config.replay == [files / "test.xyz"] and config.replay_batch_size() == config.batch_size
    assert config.model_copy(update={"replay_ratio": 0.5, "batch_size": 4}).replay_batch_size() == 2
    assert config.model_copy(update={"replay": []}).replay_batch_size() == 0
    with pytest.raises(ConfigError, match="rounds to no replay structure"):
        FinetuneConfig.checked(options | {"replay_ratio": 0.1, "batch_size": 4})
