"""Run safety (issue 13): data checked on reading, run directories not clobbered, resume by content,
merge refusing to overwrite, one-line CLI errors, 'none' values, rank-0 reporting."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from finetune_setup import finetune_config
from typer.testing import CliRunner

from peft_equi.errors import ConfigError, DataError, PeftEquiError, UnknownElementError, UntrustedPickleError
from peft_equi_train import FinetuneConfig, Finetuner
from peft_equi_train.checkpoint import load_checkpoint
from peft_equi_train.cli import app
from peft_equi_train.run_directory import RunDirectory

runner = CliRunner()
MISSING_MODEL = "no-such-model.model"  # loading it would fail: errors below come before the model


@pytest.fixture(scope="module")
def finished(files, tmp_path_factory):
    """A finished one-epoch LoRA run (mergeable)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    Finetuner(finetune_config(files, run, epochs=1, plots=False)).run()
    return run


def _structures(files):
    return read(files / "data.xyz", index=":")


def _relabel(atoms, energy=None, forces=None):
    results = atoms.calc.results
    atoms.calc = SinglePointCalculator(
        atoms,
        energy=results["energy"] if energy is None else energy,
        forces=results["forces"] if forces is None else forces,
    )
    return atoms


def _bad_extxyz(files, tmp_path, kind):
    """A copy of the training file with structure 3 broken in one way, an intact copy, and the forces key."""
    structures = _structures(files)
    for atoms in structures:
        atoms.arrays["REF_forces"] = atoms.calc.results["forces"].copy()
    write(tmp_path / "good.xyz", structures)
    broken = structures[3]
    key = "forces"
    if kind == "nan energy":
        _relabel(broken, energy=float("nan"))
    elif kind == "inf force":
        forces = broken.calc.results["forces"].copy()
        forces[1, 2] = np.inf
        _relabel(broken, forces=forces)
    elif kind == "nan position":
        broken.positions[0, 0] = np.nan
    elif kind == "forces shape":
        broken.arrays["REF_forces"] = np.zeros((len(broken), 2))
        key = "REF_forces"
    write(tmp_path / "bad.xyz", structures)
    return tmp_path / "bad.xyz", tmp_path / "good.xyz", key


@pytest.mark.parametrize(
    "kind, message",
    [
        ("nan energy", "energy is nan"),
        ("inf force", r"non-finite forces \(atom 1\)"),
        ("nan position", r"non-finite positions \(atom 0\)"),
        ("forces shape", r"forces have shape \(\d+, 2\)"),
    ],
)
@pytest.mark.parametrize("role", ["train", "valid", "test"])
def test_bad_values_are_named_before_the_model_is_loaded(files, tmp_path, kind, message, role):
    """Item 5: non-finite or misshaped data: the file and the structure, before any model is loaded."""
    bad, good, key = _bad_extxyz(files, tmp_path, kind)
    config = finetune_config(
        files, tmp_path / "run", model=MISSING_MODEL, forces_key=key, **({"train": good} | {role: bad})
    )
    with pytest.raises(DataError, match=rf"bad\.xyz: structure 3: {message}"):
        Finetuner(config).run()


def test_bad_rmd17_files_are_named(files, tmp_path):
    n, atoms = 6, 5
    arrays = {
        "nuclear_charges": np.array([6, 1, 1, 1, 1]),
        "coords": np.random.default_rng(0).normal(size=(n, atoms, 3)),
        "energies": np.zeros(n),
        "forces": np.zeros((n, atoms, 3)),
    }
    arrays["energies"][4] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(DataError, match=r"nan\.npz: structure 4: non-finite energy"):
        Finetuner(finetune_config(files, tmp_path / "run", model=MISSING_MODEL, train=tmp_path / "nan.npz")).run()
    np.savez(tmp_path / "shape.npz", **(arrays | {"forces": np.zeros((n, atoms + 1, 3))}))
    with pytest.raises(DataError, match=r"shape\.npz: forces has shape \(6, 6, 3\), expected \(6, 5, 3\)"):
        Finetuner(finetune_config(files, tmp_path / "run", model=MISSING_MODEL, train=tmp_path / "shape.npz")).run()


def test_data_errors_are_data_errors(tmp_path):
    """Item 5: missing keys, non-numeric values and bad indices are DataErrors (one line naming the file)."""
    from peft_equi_train.data import read_dataset, read_isolated_atom_energies, read_rmd17

    n, atoms = 4, 2
    coords = np.zeros((n, atoms, 3))
    coords[:, 1, 2] = 0.74  # H2
    arrays = {"nuclear_charges": np.array([1, 1]), "coords": coords, "energies": np.zeros(n)}
    np.savez(tmp_path / "nokeys.npz", **arrays)
    arrays["forces"] = np.zeros((n, atoms, 3))
    np.savez(tmp_path / "ok.npz", **arrays)
    (tmp_path / "iso-none.xyz").write_text('1\nProperties=species:S:1:pos:R:3 pbc="F F F"\nH 0 0 0\n')
    (tmp_path / "iso-text.xyz").write_text('1\nProperties=species:S:1:pos:R:3 energy=abc pbc="F F F"\nH 0 0 0\n')
    cases = [
        (lambda: read_dataset(tmp_path / "nokeys.npz"), r"nokeys\.npz: not an rMD17 file: missing keys \['forces'\]"),
        (
            lambda: read_rmd17(tmp_path / "ok.npz", indices=[0, 4]),
            r"ok\.npz: structure index 4 out of range \(the file has 4 structures\)",
        ),
        (lambda: read_rmd17(tmp_path / "ok.npz", indices=[-1]), r"ok\.npz: structure index -1 out of range"),
        (lambda: read_rmd17(tmp_path / "ok.npz", indices=[0.5]), r"ok\.npz: structure indices must be .*integers"),
        (lambda: read_isolated_atom_energies(tmp_path / "iso-none.xyz"), r"iso-none\.xyz: structure 0: .*no energy"),
        (lambda: read_isolated_atom_energies(tmp_path / "iso-text.xyz"), r"iso-text\.xyz: .*not a number \('abc'\)"),
    ]
    for read_it, message in cases:
        with pytest.raises(DataError, match=message) as info:
            read_it()
        assert "\n" not in str(info.value)
    assert len(read_rmd17(tmp_path / "ok.npz", indices=[3, 0])) == 2


def test_e0s_file_is_checked_before_the_model_is_loaded(files, tmp_path):
    (tmp_path / "iso.xyz").write_text('1\nProperties=species:S:1:pos:R:3 energy=-13.6 pbc="F F F"\nH 0 0 0\n')
    config = finetune_config(files, tmp_path / "run", model=MISSING_MODEL, e0s=str(tmp_path / "iso.xyz"))
    with pytest.raises(PeftEquiError, match=r"iso\.xyz has no isolated-atom energy for atomic numbers \[6, 8\]"):
        Finetuner(config).run()


def test_non_empty_output_is_refused_and_overwrite_clears_only_a_run(files, tmp_path):
    """Item 7: no silent overwrite; --overwrite deletes the old run (no stale merged.model), never foreign files."""
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    for name in ("metrics.csv", "results.json", "merged.model", "checkpoint.pt"):
        (run / name).write_text("old")
    with pytest.raises(PeftEquiError, match=r"is not empty .*--resume.*--overwrite"):
        Finetuner(finetune_config(files, run, model=MISSING_MODEL)).run()
    assert (run / "merged.model").read_text() == "old"

    (run / "notes.txt").write_text("mine")
    with pytest.raises(PeftEquiError, match=r"not overwriting .*notes\.txt"):
        Finetuner(finetune_config(files, run, model=MISSING_MODEL, overwrite=True)).run()
    assert (run / "notes.txt").read_text() == "mine" and (run / "merged.model").is_file()
    (run / "notes.txt").unlink()

    result = Finetuner(finetune_config(files, run, epochs=1, overwrite=True, adapter="mmea", adapter_options={})).run()
    assert result["merged_model"] is None  # MMEA is input-dependent: nothing merged ...
    assert not (run / "merged.model").exists()  # ... and the old run's merged model is gone
    assert json.loads((run / "results.json").read_text())["kept"]["epoch"] == 1
    with pytest.raises(ValueError, match="not both"):
        finetune_config(files, run, resume=True, overwrite=True)


def test_overwrite_keeps_the_previous_run_until_the_model_is_loaded(files, finished, tmp_path):
    """Item 7 (review): --overwrite deletes the old run only once the model is loaded and fits the data."""
    from ase.build import molecule

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    listing = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    nitrogen = molecule("NH3")
    nitrogen.calc = SinglePointCalculator(nitrogen, energy=-1.0, forces=np.zeros((4, 3)))
    write(tmp_path / "nh3.xyz", [nitrogen] * 2)
    failures = [
        ({"model": str(files / "mistyped.model")}, FileNotFoundError, "mistyped.model"),
        ({"trust_pickle": False}, UntrustedPickleError, "trust"),
        ({"test": tmp_path / "nh3.xyz"}, UnknownElementError, r"N \(Z=7\)"),
    ]
    for options, error, message in failures:
        with pytest.raises(error, match=message):
            Finetuner(finetune_config(files, run, overwrite=True, **options)).run()
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == listing, options


class _Interrupted(Exception):
    pass


def _metric_rows(run):
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_resume_from_another_place_and_no_duplicate_rows(files, tmp_path, monkeypatch):
    """Item 8: resume compares what changes training (files by content), keeps integer epochs, no duplicates."""
    options = dict(epochs=5, checkpoint_every=2, plots=False)
    interrupted = Finetuner(finetune_config(files, tmp_path / "run", **options))
    original = interrupted.loop.train_epoch

    def stop(wrapped, state, loader, epoch, replays=None):
        if epoch == 3:  # after epoch 3's row, the checkpoint is epoch 2's
            raise _Interrupted
        return original(wrapped, state, loader, epoch, replays)

    interrupted.loop.train_epoch = stop
    with pytest.raises(_Interrupted):
        interrupted.run()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2
    assert [r["epoch"] for r in _metric_rows(tmp_path / "run")] == ["1", "2", "3"]

    # the run copied elsewhere, the data given by a relative path from another working directory,
    # other reporting and checkpoint options: still the same training
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.copy(files / "data.xyz", tmp_path / "data.xyz")
    monkeypatch.chdir(tmp_path)
    moved = dict(options, checkpoint_every=1, plots=True, progress=False, train="data.xyz")
    with pytest.raises(ConfigError, match=r"options changed since the checkpoint: lr$"):
        Finetuner(finetune_config(files, "copy", resume=True, **(moved | {"lr": 1e-3}))).run()
    with pytest.raises(ConfigError, match=r"options changed since the checkpoint: train$"):
        Finetuner(finetune_config(files, "copy", resume=True, **(moved | {"train": files / "test.xyz"}))).run()
    Finetuner(finetune_config(files, "copy", resume=True, **moved)).run()
    rows = _metric_rows(tmp_path / "copy")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert {r["stage"] for r in rows} == {"1"}


def test_resume_refuses_changed_content_at_the_same_path(files, tmp_path, monkeypatch):
    """Item 8 (review): a recorded file is compared by content only: edited in place, or a relative path now naming
    another file, it has changed, whatever the path says."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        shutil.copy(files / "data.xyz", folder / "data.xyz")
        shutil.copy(files / "base.model", folder / "base.model")
    edited = _structures(files)
    _relabel(edited[0], energy=edited[0].calc.results["energy"] + 1.0)
    write(second / "data.xyz", edited)
    monkeypatch.chdir(first)
    options = dict(epochs=1, plots=False, train="data.xyz", model="base.model")
    Finetuner(finetune_config(files, tmp_path / "run", **options)).run()
    resume = dict(options, epochs=2, resume=True)

    monkeypatch.chdir(second)  # the same relative paths: another training file, the same model bytes
    with pytest.raises(ConfigError, match=r"options changed since the checkpoint: train$"):
        Finetuner(finetune_config(files, tmp_path / "run", **resume)).run()
    monkeypatch.chdir(first)
    write(first / "data.xyz", edited)  # the training file edited in place
    with pytest.raises(ConfigError, match=r"options changed since the checkpoint: train$"):
        Finetuner(finetune_config(files, tmp_path / "run", **resume)).run()
    shutil.copy(files / "data.xyz", first / "data.xyz")
    with (first / "base.model").open("ab") as model:  # the model file changed in place
        model.write(b"\0")
    with pytest.raises(ConfigError, match=r"options changed since the checkpoint: model$"):
        Finetuner(finetune_config(files, tmp_path / "run", **resume)).run()


def test_merge_refuses_to_overwrite(files, finished, tmp_path):
    """Item 9."""
    args = ["merge", "--model", str(files / "base.model"), "--trust-pickle", "--run", str(finished)]
    args += ["--output", str(tmp_path / "merged")]
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / "merged.model").write_bytes(b"precious")
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "merged.model exists: give --overwrite" in result.output
    assert (tmp_path / "merged.model").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["merged.model"]  # no temporary left behind
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "merged.model").read_bytes() != b"precious"


CLI_ERRORS = {
    "adapter option typo": (["--adapter-options", "{rnak: 2}"], "adapter 'lora': unknown option 'rnak'"),
    "foreign preset option": (["--adapter", "full", "--adapter-options", "{rank: 2}"], "preset 'full'"),
    "bad yaml": (["--adapter-options", "{rank: 2"], "--adapter-options: not valid YAML"),
    "bad option value": (["--adapter-options", "{rank: -1}"], "adapter 'lora': rank: Input should be greater"),
    "n-train too large": (["--n-train", "500"], "data.xyz: n_train is 500 but the file has only 16 structures"),
    "empty extxyz": (["--train", "{tmp}/empty.xyz"], "empty.xyz: no structures in the file"),
    "garbage extxyz": (["--train", "{tmp}/garbage.xyz"], "garbage.xyz: cannot be read"),
    "nan in validation": (["--valid", "{tmp}/bad.xyz"], "bad.xyz: structure 3: energy is nan"),
    "missing energy key": (["--energy-key", "REF_energy"], "data.xyz: structure 0 has no 'REF_energy'"),
    "config option": (["--lr", "-1"], "lr: Input should be greater than 0"),
    "non-empty output": (["--output", "{tmp}/full"], "is not empty"),
    "unknown device": (["--device", "nonsense"], "device 'nonsense' cannot be used"),
    "missing model": ([], MISSING_MODEL),  # found after the output folder is claimed: it is removed again
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_errors_are_one_line(files, tmp_path, case):
    """Item 10 (and 5, 7 through the CLI): rc 2 and a single 'error:' line, before the model is loaded; a failed
    run leaves no output folder behind."""
    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "garbage.xyz").write_text("this is\nnot an extxyz file\n")
    structures = _structures(files)
    _relabel(structures[3], energy=float("nan"))
    write(tmp_path / "bad.xyz", structures)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.csv").write_text("epoch\n1\n")
    extra, expected = CLI_ERRORS[case]
    args = ["finetune", "--model", MISSING_MODEL, "--train", str(files / "data.xyz"), "--adapter", "lora"]
    args += ["--valid-fraction", "0.25", "--batch-size", "4", "--output", str(tmp_path / "run"), "--no-progress"]
    result = runner.invoke(app, args + [a.replace("{tmp}", str(tmp_path)) for a in extra])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert expected in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("outcome", ["failed", "failed after writing", "committed", "failed in an existing folder"])
def test_a_failed_run_removes_only_the_empty_folders_it_created(tmp_path, outcome):
    output = tmp_path / "runs" / "new" / "run"
    if outcome == "failed in an existing folder":
        output.mkdir(parents=True)
    directory = RunDirectory(output, resume=False, overwrite=False).open()
    if outcome == "failed after writing":
        (output / "checkpoint.pt").write_bytes(b"kept for --resume")
    if outcome == "committed":
        directory.commit()
    directory.close()
    remaining = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    if outcome == "failed":
        assert remaining == []
    else:
        assert output.is_dir() and "runs/new/run" in remaining


def test_quiet_turns_the_progress_bars_off(files, monkeypatch):
    seen = []
    result = {"trainable_parameters": 7, "before": {}, "after": {}, "kept": {"keep": "best", "epoch": 1}}
    monkeypatch.setattr(Finetuner, "run", lambda self: seen.append(self.config.progress) or result)
    args = ["finetune", "--model", "m", "--train", str(files / "data.xyz")]
    for quiet in ([], ["--quiet"]):
        assert runner.invoke(app, [*quiet, *args]).exit_code == 0
    assert seen == [True, False]


def test_none_values(files, tmp_path):
    """Item 11: 'none' turns optional options off, from flags (over a config file) and from YAML."""
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {files / 'base.model'}\ntrust_pickle: true\ntrain: {files / 'data.xyz'}\n"
        f"test: {files / 'test.xyz'}\nclip_grad: none\nepochs: 1\n"
    )
    assert FinetuneConfig.from_file(config).clip_grad is None
    parsed = FinetuneConfig.from_file(config, ema_decay="none", test="none", n_train="None", start_swa="none")
    assert (parsed.ema_decay, parsed.test, parsed.n_train, parsed.start_swa) == (None, None, None, None)
    args = ["finetune", "--config", str(config), "--ema-decay", "none", "--test", "none", "--batch-size", "4"]
    args += ["--valid-fraction", "0.25", "--output", str(tmp_path / "run"), "--no-progress", "--no-plots"]
    args += ["--adapter", "lora", "--adapter-options", "{rank: 2}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| valid | after |" in result.output and "| test |" not in result.output
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["ema"] is None


@pytest.mark.parametrize("rank, prints", [("0", True), ("1", False)])
def test_only_rank_zero_reports(files, tmp_path, monkeypatch, rank, prints):
    """Item 12: under torchrun only the first process prints the trainable parameters and the table."""
    result = {"trainable_parameters": 7, "before": {}, "after": {}, "kept": {"keep": "best", "epoch": 1}}
    monkeypatch.setattr(Finetuner, "run", lambda self: result)
    monkeypatch.setenv("RANK", rank)
    out = runner.invoke(app, ["finetune", "--model", "m", "--train", str(files / "data.xyz")])
    assert out.exit_code == 0, out.output
    assert ("7 trainable parameters" in out.output) is prints
    assert ("| split |" in out.output) is prints
