"""The benchmark scripts' logic: method selection, convergence, the 3BPA hot test set, an end-to-end mini run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from organic_sets import fake_set
from paths import ROOT

import peft_equi

sys.path.insert(0, str(ROOT / "benchmarks"))

import bpa3
import comparison
import cost
import organic_summary
import rmd17
import sample_organic

SHARED = ROOT.parent / "shared" / "data"


def test_schedule_names_tell_overridden_schedules_apart():
    quick, full = rmd17.QUICK, rmd17.FULL
    assert comparison.schedule_name(False, 500, "float64", quick, full) == "full"
    assert comparison.schedule_name(True, 10, "float32", quick, full) == "quick"
    assert comparison.schedule_name(False, 150, "float32", quick, full) == "e150-float32"
    assert comparison.schedule_name(True, 10, "float64", quick, full) == "quick-e10-float64"
    assert comparison.schedule_name(False, 50, "float32", quick, full, "average") == "e50-float32-e0s-average"
    assert comparison.schedule_name(False, 500, "float64", quick, full, "fit") == "full"


def test_organic_sample_spreads_over_the_split_and_keeps_the_labels(tmp_path):
    from peft_equi_train.data import read_dataset

    folder, out = tmp_path / "data", tmp_path / "retain.extxyz"  # the real shards are not in git: a fake set
    fake_set(
        folder, {"seed": 1, "temperatures": [300.0, 600.0], "configs_per_temperature": 5, "holdout_fraction": 0.5}, 6
    )
    sample_organic.main(["--data", str(folder), "--split", "test", "--n", "5", "--out", str(out)])
    images = sample_organic.sample(folder, "test", 5, seed=0)
    test_molecules = json.loads((folder / "split.json").read_text())["test"]
    assert len(test_molecules) >= 2
    counts = [sum(a.info["molecule"] == m for a in images) for m in test_molecules]
    assert len(images) == 5 and max(counts) - min(counts) <= 1  # spread evenly over every test molecule
    data = read_dataset(out)  # the labels travel with the sample
    assert np.allclose(data.energies, [a.info["energy"] for a in images])
    assert np.allclose(np.concatenate(data.forces), np.concatenate([a.arrays["forces"] for a in images]))
    other = sample_organic.sample(folder, "test", 5, seed=1)
    assert [a.positions.tobytes() for a in other] != [a.positions.tobytes() for a in images]


def test_method_selection():
    assert list(comparison.select_methods(None, False, is_mace=False)) == list(comparison.METHODS)
    with_presets = comparison.select_methods(None, False, is_mace=True)
    assert {"mmea-paper", "elora-paper", "mace-lora"} <= set(with_presets)
    assert "conventional adapter (not equivariant)" in comparison.select_methods(None, True, is_mace=True)
    with pytest.raises(SystemExit, match="MACE recipe"):
        comparison.select_methods(None, True, is_mace=False)  # the ablations vary mmea-paper
    assert list(comparison.select_methods(["mmea", "full"], False, is_mace=False)) == ["mmea", "full"]
    with pytest.raises(SystemExit, match="mmea-paper"):
        comparison.select_methods(["mmea-paper"], False, is_mace=False)  # a MACE preset on a non-MACE model


def test_epochs_to_reach():
    curve = [{"epoch": e, "valid_forces_mae_meV_per_A": v} for e, v in [(1, 5.0), (2, 3.0), (3, 1.0), (4, 2.0)]]
    assert comparison.epochs_to_reach(curve, 3.0) == 2
    assert comparison.epochs_to_reach(curve, 0.5) is None


@pytest.mark.skipif(not (SHARED / "3bpa").is_dir(), reason="needs ../shared/data/3bpa")
def test_bpa3_hot_test_set_is_hotter_than_every_300k_configuration(tmp_path):
    from peft_equi_train.data import read_dataset

    path, rule = bpa3.hot_test_set(
        SHARED / "3bpa" / "train_300K.xyz", SHARED / "3bpa" / "train_mixedT.xyz", tmp_path / "t.xyz"
    )
    cold, hot = read_dataset(SHARED / "3bpa" / "train_300K.xyz"), read_dataset(path)
    assert len(hot) == rule["test_configurations"] > 100
    assert (hot.energies - cold.energies.min()).min() > cold.energies.max() - cold.energies.min()
    assert not set(np.round(hot.energies, 6)) & set(np.round(cold.energies, 6))
    assert all(f.shape == (27, 3) for f in hot.forces)


@pytest.mark.skipif(not (SHARED / "rmd17").is_dir(), reason="needs ../shared/data/rmd17")
@pytest.mark.slow
def test_rmd17_script_end_to_end_on_a_small_mace(tmp_path):
    """One epoch of two methods on a small MACE file: tables, plots and the run record are written."""
    from ase.build import molecule
    from ase.io import write

    from peft_equi.families.mace.architectures import build_mace

    torch.save(build_mace("small"), tmp_path / "small.model")
    write(tmp_path / "methanol.xyz", [molecule("CH3OH"), molecule("HCOOH")])
    out = tmp_path / "out"
    model_args = ["--model", str(tmp_path / "small.model"), "--trust-pickle"]
    run_args = ["--methods", "mmea-paper", "bitfit", "--epochs", "1", "--n-test", "4", "--output", str(out)]
    checks = ["--retain", str(tmp_path / "methanol.xyz"), "--md-structure", str(tmp_path / "methanol.xyz"),
              "--md-steps", "5", "--md-seeds", "2", "--replay", str(tmp_path / "methanol.xyz"),
              "--replay-methods", "bitfit", "--replay-ratio", "0.4"]  # fmt: skip
    rmd17.main(["--quick", "--molecule", "ethanol", *model_args, *run_args, *checks])
    results = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in results["methods"]] == ["mmea-paper", "bitfit", "bitfit + replay"]
    assert all(np.isfinite(m["after"]["test"]["forces_mae_meV_per_A"]) for m in results["methods"])
    assert results["record"]["git_commit"] and results["record"]["packages"]["torch"]
    bitfit, replayed = results["methods"][1:]
    assert replayed["after"]["test"] != bitfit["after"]["test"]  # the replay loss changed the training
    for method in results["methods"]:  # retention (zero before: the foundation's own labels) and the MD check
        assert method["before"]["retain_methanol"]["forces_mae_meV_per_A"] < 1e-6
        assert method["md_runs"] == 2 and len(method["md_seeds"]) == 2 and method["md_settings"]["nvt_steps"] == 5
    table = (out / "results.md").read_text()
    assert "| mmea-paper |" in table and "Differences from the papers" in table
    assert "Published" not in table  # only aspirin's published numbers are on record
    assert "full 9.7 / 23.9" in "".join(rmd17.published("aspirin"))
    assert "methanol: F MAE vs foundation (meV/A)" in table and "intact" in table
    foundation = results["foundation_md"]  # the foundation's own MD check, the 'before' of the MD column
    assert foundation["md_runs"] == 2
    assert f"MD of the foundation before fine-tuning: {foundation['md_intact']}/2" in table
    assert (out / "validation_forces.png").stat().st_size > 0 and (out / "test_errors.png").stat().st_size > 0


def test_ratios_are_taken_within_each_round():
    from timing import round_ratios

    samples = {"adapted": [2.0, 4.0, 6.0, 3.0], "base": [1.0, 2.0, 2.0, 3.0]}  # the machine slows in rounds 2-3
    assert round_ratios(samples, "adapted", "base") == (1.75, 2.0, 2.25)  # ratios 2, 2, 3, 1
    assert round_ratios({"a": [3.0], "b": [2.0]}, "a", "b") == (1.5, 1.5, 1.5)


def test_cost_script_times_methods_eager_and_compiled(tmp_path):
    """benchmarks/cost.py on a small MACE file: the chosen methods (after full), TorchScript and merged ratios."""
    from peft_equi.families.mace.architectures import build_mace

    torch.save(build_mace("small"), tmp_path / "small.model")
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "small.model"), "--trust-pickle", "--repeats", "2", "--batch", "1"]
    cost.main([*args, "--methods", "mmea on o3.Linear", "elora", "--fusion", "off", "--output", str(out)])
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert list(rows) == ["full", "mmea on o3.Linear", "elora"]
    assert rows["mmea on o3.Linear"]["merged_forward_forces_vs_base"] is None  # MMEA cannot be merged
    assert rows["elora"]["merged_forward_forces_vs_base"] > 0 and rows["full"]["train_step_vs_full"] == 1.0
    assert all(r["scripted_vs_eager"] > 0 for r in rows.values())
    low, median, high = rows["elora"]["forward_forces_vs_base_quartiles"]
    assert low <= median <= high and median == rows["elora"]["forward_forces_vs_base"]
    assert rows["mmea on o3.Linear"]["trainable_parameters"] < rows["elora"]["trainable_parameters"]
    assert "fusion strategy: off" in (out / "results.md").read_text()
    with pytest.raises(SystemExit, match="unknown method"):
        cost.main([*args, "--methods", "mmea-papr", "--output", str(out)])


def test_an_interrupted_method_continues_from_its_checkpoint(tmp_path, monkeypatch):
    """A comparison stopped inside a method resumes that method where its last checkpoint left it."""
    import csv

    from peft_equi.families.mace.architectures import build_mace
    from peft_equi_train.loop import TrainingLoop

    torch.save(build_mace("small"), tmp_path / "small.model")
    out = tmp_path / "out"
    argv = ["--quick", "--molecule", "ethanol", "--model", str(tmp_path / "small.model"), "--trust-pickle",
            "--methods", "bitfit", "--epochs", "3", "--n-test", "4", "--output", str(out)]  # fmt: skip
    original = TrainingLoop.train_epoch

    def stop_in_epoch_3(self, wrapped, state, loader, epoch, replays=None):
        if epoch == 2:  # 0-based: the checkpoint of epoch 2 is written
            raise KeyboardInterrupt
        return original(self, wrapped, state, loader, epoch, replays)

    monkeypatch.setattr(TrainingLoop, "train_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        rmd17.main(argv)
    monkeypatch.setattr(TrainingLoop, "train_epoch", original)
    run = out / "runs" / "bitfit"
    assert (run / "checkpoint.pt").is_file() and not (run / "method.json").exists()
    rmd17.main(argv)
    with (run / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]  # continued, not restarted
    assert json.loads((run / "method.json").read_text())["kept_epoch"] >= 1


def test_results_table_reports_a_diverged_method():
    errors = {"energy_mae_meV": 10.0, "forces_mae_meV_per_A": 20.0}
    done = {
        "label": "mmea",
        "trainable_parameters": 10,
        "base_parameters": 100,
        "before": {"test": errors},
        "after": {"test": errors},
        "mergeable": False,
        "epoch_time_s": 1.0,
        "curve": [{"epoch": 1, "stage": 1, "valid_loss": 2.0, "valid_forces_mae_meV_per_A": 20.0}],
    }
    diverged = {"label": "film", "diverged": "loss became inf at epoch 1, batch 4: stopping. The last good ..."}
    table = "\n".join(comparison.results_table([done, diverged]))
    assert "| mmea | 10 | 10.0 | 10.0 | 20.0 |" in table
    assert "| film | | | diverged |" in table and "- film: loss became inf at epoch 1, batch 4." in table
    counted = "\n".join(comparison.results_table([done, diverged | {"trainable_parameters": 1234}]))
    assert "| film | 1,234 | | diverged |" in counted  # a diverged row still shows what it trained


def test_base_parameters_excludes_the_adapters():
    from peft_equi.families.mace.architectures import build_mace

    base = build_mace("small")
    count = sum(p.numel() for p in base.parameters())
    model = peft_equi.get_peft_model(base, "mmea", rank=4)
    assert comparison.base_parameters(model) == count < sum(p.numel() for p in model.parameters())


def test_compare_results_matches_methods_by_label_and_alias():
    import compare_results

    def method(label, e, f):
        errors = {"energy_mae_meV": e, "forces_mae_meV_per_A": f}
        return {"label": label, "before": {"test": errors}, "after": {"test": errors}, "trainable_parameters": 7}

    old = {"methods": [method("full", 5529.3, 124.6), method("mmea", 152.1, 119.5)]}
    new = {"methods": [method("full", 102.5, 144.4), method("mmea-paper", 126.9, 150.3), method("bitfit", 1, 2)]}
    rows = compare_results.table(old, new, {"mmea-paper": "mmea"})
    assert "| full | 102.5 / 144.4 | 5529.3 / 124.6 | 102.5 / 144.4 | 7 |" in rows
    assert any(r.startswith("| mmea-paper |") and "152.1 / 119.5" in r for r in rows)
    assert any(r.startswith("| bitfit |") and "not run" in r for r in rows)


def _method(label: str, forces: float) -> dict:
    errors = {"energy_mae_meV": forces / 4, "forces_mae_meV_per_A": forces}
    curve = [{"epoch": e, "stage": 1, "valid_forces_mae_meV_per_A": forces + 3 - e} for e in (1, 2)]
    return {"label": label, "trainable_parameters": 10, "base_parameters": 100, "after": {"test": errors},
            "before": {"test": {"energy_mae_meV": 60.0, "forces_mae_meV_per_A": 300.0}}, "curve": curve}  # fmt: skip


def test_organic_summary_picks_the_best_peft_method_and_spreads_seeds(tmp_path):
    """The summary's numbers come from the results files: best PEFT per molecule, seeds as mean +- sd."""
    runs = {
        "aspirin-e50-float32": {"full": 30.0, "mace-lora": 40.0, "elora-paper": 33.0, "mmea-paper": 27.0},
        "aspirin-e50-float32-seed1": {"full": 32.0, "mmea-paper": 29.0},
        "aspirin-e50-float32-seed2": {"full": 34.0, "mmea-paper": 31.0},
        "ethanol-e50-float32": {"full": 20.0, "mmea-paper": 22.0, "elora-paper": 21.0},
    }
    for name, methods in runs.items():
        folder = tmp_path / "rmd17" / f"mace-organic-xtb-{name}"
        folder.mkdir(parents=True)
        results = {"methods": [_method(label, f) for label, f in methods.items()]}
        (folder / "results.json").write_text(json.dumps(results))
    organic_summary.main(["--results", str(tmp_path)])
    summary = json.loads((tmp_path / "mace-organic-xtb-e50-float32-summary.json").read_text())
    by_molecule = {row["molecule"]: row for row in summary["molecules"]}
    assert by_molecule["aspirin"]["best_peft"] == "mmea-paper" and by_molecule["aspirin"]["best_peft_forces"] == 27.0
    assert by_molecule["ethanol"]["best_peft"] == "elora-paper" and by_molecule["ethanol"]["full_forces"] == 20.0
    assert summary["aspirin"]["methods"]["full"]["forces_over_seeds"] == [30.0, 32.0, 34.0]
    text = (tmp_path / "mace-organic-xtb-e50-float32-summary.md").read_text()
    assert "| ethanol | 5.0 / 20.0 | not run | 5.2 / 21.0 | 5.5 / 22.0 | elora-paper | +5 % |" in text
    assert "32.0 +- 2.0 (n=3)" in text and "29.0 +- 2.0 (n=3)" in text  # full and mmea-paper over seeds
    assert "9.7 / 23.9" in text  # the published aspirin numbers next to ours
    assert "| full | 5.0 / 20.0 | 21.0 | not run | not run |" in text  # ethanol's schedules: e150 not run here


def test_e0_summary_sets_both_modes_side_by_side(tmp_path):
    """e0_summary.py: one row per (molecule, e0s, schedule, method) from the results files, the modes side by side."""
    import e0_summary

    runs = {
        "ethanol-e50-float32-fit": {"full": 20.0, "elora-paper": 21.0, "mmea-paper": 22.0},
        "ethanol-e50-float32-average": {"full": 30.0, "elora-paper": 24.0, "mmea-paper": 23.0},
        "ethanol-full-float32-fit-seed1": {"full": 19.0},
        "aspirin-e50-float32-average-ablations": {"no scalar modulation": 40.0},
        "not-a-comparison": {"full": 1.0},
    }
    for name, methods in runs.items():
        (tmp_path / name).mkdir()
        results = {"methods": [_method(label, f) | {"kept_epoch": 2} for label, f in methods.items()]}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    e0_summary.main(["--folder", str(tmp_path)])
    rows = json.loads((tmp_path / "summary.json").read_text())
    keys = {(r["molecule"], r["e0s"], r["schedule"], r["method"]): r for r in rows}
    assert len(keys) == len(rows) == 7  # seed 1 goes to summary-seeds.json, unknown folders are skipped
    assert keys["ethanol", "average", "e50-float32", "full"]["test_forces_mae_meV_per_A"] == 30.0
    assert keys["ethanol", "fit", "e50-float32", "elora-paper"]["test_energy_mae_meV"] == 21.0 / 4
    assert ("aspirin", "average", "e50-float32", "mmea-paper, no scalar modulation") in keys
    assert [r["seed"] for r in json.loads((tmp_path / "summary-seeds.json").read_text())] == [1]
    text = (tmp_path / "summary.md").read_text()
    assert "| ethanol | full | 5.0 / 20.0 | 7.5 / 30.0 | +50 % |" in text
    # best PEFT against full, per mode; mace-lora has not run here: the row says so
    assert "| ethanol | elora-paper +5 % (2 of 3 run so far) | mmea-paper -23 % (2 of 3 run so far) |" in text
    assert (tmp_path / "curves-e50-float32.png").is_file()
