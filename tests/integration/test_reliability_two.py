"""Reliability, round two (issue 25): nothing lost, nothing silently wrong, no file outside its place.

One table per kind of case; each case gives a one-line error or the exact result, with the previous run
and the user's files as they were.

1. Data lost: --overwrite keeps the previous run until the new one is written; a full disk at any file
   leaves no partial file and an unfinished run that evaluate refuses and --resume completes; symlinks
   in a run directory are refused; one run at a time per directory (a lock the kernel drops on SIGKILL);
   a read-only directory is found before training.
2. Silently wrong: non-finite options; a diverging run writes nothing; the base fingerprint is exact;
   adapter tensors of other dtypes or non-finite; --resume with fewer epochs; data values; float64 runs
   fully float64 on every family.
3. Unsafe or hanging: adapter names, untrusted regular expressions, one-line CLI errors.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from finetune_setup import finetune_config
from mace_models import build_mace, molecules
from models import MixedNet
from typer.testing import CliRunner

import peft_equi
from peft_equi.errors import AdapterLoadError, BaseMismatchError, ConfigError, DataError, PeftEquiError
from peft_equi.testing import randomize_adapters
from peft_equi.tuner.save_and_load import config_digest, tensors_digest
from peft_equi_train import Finetuner
from peft_equi_train.cli import app
from peft_equi_train.loop import TrainingDivergedError
from peft_equi_train.run_directory import RunDirectory

runner = CliRunner()
MISSING_MODEL = "no-such-model.model"  # loading it would fail: errors below come before the model


def one_error_line(result) -> str:
    """The single ``error:`` line of a CLI run that failed (exit code 2), and nothing else printed."""
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    return result.output.strip()


def listing(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (what must not change)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def siblings(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.parent.iterdir() if p.name != directory.name)


@pytest.fixture(scope="module")
def finished(files, tmp_path_factory):
    """A finished one-epoch LoRA run (mergeable, no plots)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    Finetuner(finetune_config(files, run, epochs=1, plots=False)).run()
    return run


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    import shutil

    run = tmp_path / "folder" / "run"
    shutil.copytree(finished, run)
    return run


# -- 1. data lost ---------------------------------------------------------------------------------------------


class _Killed(Exception):
    """Stands for anything that stops a run late: out of memory, a bug, an interrupt."""


def _fail_training(monkeypatch):
    def fit(*args, **kwargs):
        raise _Killed

    monkeypatch.setattr("peft_equi_train.loop.TrainingLoop.fit", fit)


def _fail_writing(monkeypatch, name: str):
    """The disk is full when ``name`` is written (its temporary file half written, then ENOSPC)."""
    replace = os.replace

    def full(source, target):
        if Path(target).name == name:
            Path(source).write_bytes(Path(source).read_bytes()[:10])
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return replace(source, target)

    monkeypatch.setattr(os, "replace", full)


OVERWRITE_FAILURES = {
    "training stops late": (_fail_training, _Killed),
    "disk full at results.json": (lambda mp: _fail_writing(mp, "results.json"), OSError),
    "disk full at the merged model": (lambda mp: _fail_writing(mp, "merged.model"), OSError),
    "diverging loss": (None, TrainingDivergedError),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OVERWRITE_FAILURES))
def test_overwrite_keeps_the_previous_run_until_the_new_one_is_written(files, finished, tmp_path, monkeypatch, case):
    run = _copy_run(finished, tmp_path)
    before, others = listing(run), siblings(run)
    arrange, error = OVERWRITE_FAILURES[case]
    options = {"lr": 1e300} if arrange is None else {}
    if arrange is not None:
        arrange(monkeypatch)
    with pytest.raises(error):
        Finetuner(finetune_config(files, run, overwrite=True, epochs=1, plots=False, **options)).run()
    assert listing(run) == before and siblings(run) == others  # nothing left beside it either
    if case == "training stops late":  # and a run that finishes replaces it
        monkeypatch.undo()
        Finetuner(finetune_config(files, run, overwrite=True, epochs=2, plots=False)).run()
        assert json.loads((run / "results.json").read_text())["kept"]["epoch"] in (1, 2) and listing(run) != before
        assert siblings(run) == others


FULL_DISK_AT = [
    "checkpoint.pt",
    "metrics.csv",
    "adapter_model.safetensors",
    "adapter_config.json",
    "energy_correction.json",
    "merged.model",
    "learning_curves.png",
    "results.json",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL_DISK_AT)
def test_a_full_disk_leaves_no_partial_file(files, tmp_path, monkeypatch, name):
    """Every file is written atomically: the failing one is absent (or its previous version), never truncated;
    results.json (written last) is absent, so evaluate refuses the run, and --resume completes it."""
    run = tmp_path / "run"
    args = ["--quiet", "finetune", "--model", str(files / "base.model"), "--trust-pickle"]
    args += ["--train", str(files / "data.xyz")]
    args += ["--valid-fraction", "0.25", "--batch-size", "4", "--epochs", "1", "--adapter", "lora"]
    args += ["--adapter-options", "{rank: 2}", "--output", str(run), "--no-progress"]
    _fail_writing(monkeypatch, name)
    line = one_error_line(runner.invoke(app, args))
    assert "No space left on device" in line
    monkeypatch.undo()
    assert not (run / "results.json").exists()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]
    evaluate = ["evaluate", "--model", str(files / "base.model"), "--trust-pickle", "--data", str(files / "test.xyz")]
    line = one_error_line(runner.invoke(app, [*evaluate, "--run", str(run)]))
    if name == "metrics.csv":  # the run's first file: nothing was written, so the folder it created is gone
        assert not run.exists() and "run directory not found" in line
    else:
        assert "is not a finished run (no results.json" in line
    if name in ("merged.model", "results.json"):  # training done, outputs not: --resume writes them
        result = runner.invoke(app, [*args, "--resume"])
        assert result.exit_code == 0, result.output
        assert runner.invoke(app, [*evaluate, "--run", str(run)]).exit_code == 0


@pytest.mark.parametrize("entry", ["results.json", "metrics.csv", "adapter", "adapter/adapter_config.json"])
def test_resume_never_writes_through_a_symlink(files, finished, tmp_path, entry):
    run = _copy_run(finished, tmp_path)
    target = tmp_path / "precious"
    (run / entry).rename(target)
    (run / entry).symlink_to(target, target_is_directory=target.is_dir())
    kept = listing(target) if target.is_dir() else target.read_bytes()
    with pytest.raises(PeftEquiError, match=rf"holds symbolic links \({entry}\): .*never through a link") as info:
        Finetuner(finetune_config(files, run, resume=True, epochs=2, plots=False)).run()
    assert "\n" not in str(info.value)
    assert (listing(target) if target.is_dir() else target.read_bytes()) == kept


def test_one_run_per_output_directory(files, tmp_path):
    """A second run into a directory in use is refused (whatever its mode), then proceeds once the first ends."""
    run = tmp_path / "run"
    first = RunDirectory(run, resume=False, overwrite=False).open()
    for mode in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(PeftEquiError, match="is in use by another run") as info:
            Finetuner(finetune_config(files, run, model=MISSING_MODEL, **mode)).run()
        assert "\n" not in str(info.value)
    first.close()
    with pytest.raises(FileNotFoundError, match=MISSING_MODEL):  # the lock is free: on to loading the model
        Finetuner(finetune_config(files, run, model=MISSING_MODEL)).run()


def test_a_killed_runs_lock_does_not_block(tmp_path):
    """flock: the kernel drops the lock of a process killed with SIGKILL (no stale lock file to clean)."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\nd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "fcntl.flock(d, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)", str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(PeftEquiError, match="in use by another run"):
        RunDirectory(run, resume=False, overwrite=False).open()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    RunDirectory(run, resume=False, overwrite=False).open().close()
    assert list(run.iterdir()) == []


def test_a_read_only_output_is_refused_before_training(files, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    if os.geteuid() == 0:  # root writes anyway: make creating files there fail as a read-only mount would
        import tempfile

        mkstemp = tempfile.mkstemp

        def read_only(*args, dir=None, **kwargs):
            if Path(dir) == run:
                raise PermissionError(errno.EROFS, "Read-only file system", str(run))
            return mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    else:
        run.chmod(0o555)
    with pytest.raises(PeftEquiError, match=r"output .*run is not writable") as info:
        Finetuner(finetune_config(files, run, model=MISSING_MODEL)).run()  # before the model is even loaded
    assert "\n" not in str(info.value)
    run.chmod(0o755)


def test_resume_with_a_damaged_metrics_file_is_one_line(files, finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    (run / "metrics.csv").write_text("epoch,stage\n1,one\n")
    with pytest.raises(PeftEquiError, match=r"metrics\.csv: cannot be read to resume") as info:
        Finetuner(finetune_config(files, run, resume=True, epochs=2, plots=False)).run()
    assert "\n" not in str(info.value)


# -- 2. silently wrong ----------------------------------------------------------------------------------------

OPTION_ERRORS = {
    "--lr inf": (["--lr", "inf"], "lr: Input should be a finite number"),
    "--lr nan": (["--lr", "nan"], "lr: Input should be a finite number"),
    ".inf in YAML": (["--config", "{tmp}/inf.yaml"], "forces_weight: Input should be a finite number"),
    "adapter option inf": (["--adapter-options", "{alpha: .inf}"], "alpha: Input should be a finite number"),
    "--seed -1": (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),
    "binary --config": (["--config", "{tmp}/binary.yaml"], "binary.yaml: not a YAML or JSON text file"),
}


@pytest.mark.parametrize("case", list(OPTION_ERRORS))
def test_options_are_refused_on_one_line(files, tmp_path, case):
    (tmp_path / "inf.yaml").write_text("forces_weight: .inf\n")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    extra, expected = OPTION_ERRORS[case]
    args = ["finetune", "--model", MISSING_MODEL, "--train", str(files / "data.xyz"), "--adapter", "lora"]
    args += ["--output", str(tmp_path / "run"), "--no-progress"]
    line = one_error_line(runner.invoke(app, args + [a.replace("{tmp}", str(tmp_path)) for a in extra]))
    assert expected in line


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_diverging_run_stops_and_writes_nothing(files, tmp_path, keep):
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"became (nan|inf)") as info:
        Finetuner(finetune_config(files, run, lr=1e300, epochs=2, keep=keep, plots=False)).run()
    assert "\n" not in str(info.value)
    assert not run.exists()  # it diverged before writing anything: the folder it created is removed too


def _base_changes() -> dict:
    def swap(w):
        w[0], w[1] = w[1].clone(), w[0].clone()

    def one_ulp(w):  # the smallest float32 change of one value
        up = torch.tensor(float("inf"), dtype=torch.float32)
        w[3] = torch.nextafter(w[3].float(), up).to(w.dtype)

    def orthogonal(w):  # 0.4 % along a direction orthogonal to the old weights: norm and sums barely move
        d = torch.randn_like(w)
        d -= (d @ w) / (w @ w) * w
        w += 0.004 * w.norm() * d / d.norm()

    return {"two weights swapped": swap, "one float32 ulp": one_ulp, "0.4 % orthogonal": orthogonal}


@pytest.mark.parametrize("change", list(_base_changes()))
def test_the_base_fingerprint_is_exact(tmp_path, change):
    net = MixedNet()
    base = copy.deepcopy(net)
    peft_equi.get_peft_model(net, "lora", rank=2).save_pretrained(tmp_path)
    peft_equi.PeftModel.from_pretrained(copy.deepcopy(base).float(), tmp_path)  # the same base in float32: equal
    with torch.no_grad():
        _base_changes()[change](base.tp.weight.view(-1))
    with pytest.raises(BaseMismatchError, match=r"1 of \d+ fingerprinted base tensors differ: tp\.weight \(to load"):
        peft_equi.PeftModel.from_pretrained(base, tmp_path)


BAD_TENSORS = {
    "nan": (lambda t: t.fill_(float("nan")), "non-finite values in"),
    "inf": (lambda t: t.fill_(float("inf")), "non-finite values in"),
    "float16": (lambda t: t.half(), r"wrong dtypes .*\(float16\)"),
    "int64": (lambda t: t.long(), r"wrong dtypes .*\(int64\)"),
    "bool": (lambda t: t.bool(), r"wrong dtypes .*\(bool\)"),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_adapter_tensors_must_be_finite_float32_or_float64(tmp_path, case):
    """Tensors replaced and the checksum recomputed (as an editor would): refused on load, nothing cast."""
    from safetensors.torch import load_file, save_file

    net = MixedNet()
    base = copy.deepcopy(net)
    model = peft_equi.get_peft_model(net, "lora", rank=2)
    randomize_adapters(model)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    key = sorted(tensors)[0]
    change, message = BAD_TENSORS[case]
    tensors[key] = change(tensors[key].clone())
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta["tensors_sha256"] = tensors_digest(tensors)
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=message) as info:
        peft_equi.PeftModel.from_pretrained(base, tmp_path)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_resume_cannot_report_an_earlier_epoch(files, finished, tmp_path):
    """--resume --epochs 2 --keep last on an epoch-4 checkpoint would report 'kept: epoch 2' with epoch 4's weights:
    refused before anything else is done."""
    from peft_equi_train.checkpoint import atomic_save, load_checkpoint

    run = _copy_run(finished, tmp_path)
    atomic_save(load_checkpoint(run / "checkpoint.pt") | {"epoch": 4}, run / "checkpoint.pt")
    before = listing(run)
    with pytest.raises(ConfigError, match=r"the checkpoint has done 4 epochs, more than epochs \(2\)") as info:
        Finetuner(finetune_config(files, run, resume=True, epochs=2, keep="last", plots=False)).run()
    assert "\n" not in str(info.value) and listing(run) == before


def _extxyz(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(f"{len(rows)}\n{header}\n" + "\n".join(rows) + "\n")
    return path


XYZ_HEADER = 'Properties=species:S:1:pos:R:3:forces:R:3 energy={energy} pbc="{pbc}"'
DATA_CASES = {
    "energy=T": ("xyz", dict(energy="T"), r"structure 0: energy or forces are not numbers .*bool"),
    "two atoms at one position": ("xyz", dict(same=True), r"structure 0: atoms 0 and 1 are 0 A apart"),
    "zero-volume cell": ("xyz", dict(cell="1 0 0 0 1 0 0 0 0"), r"structure 0: the periodic cell is 0 A wide"),
    "0.05 A cell": ("xyz", dict(cell="0.05 0 0 0 5 0 0 0 5"), r"structure 0: the periodic cell is 0.05 A wide"),
    "Z = 1.5": ("npz", dict(nuclear_charges=[6, 1.5]), r"nuclear_charges must be integers, got 1.5"),
    "Z bool": ("npz", dict(nuclear_charges=[True, True]), r"nuclear_charges must be integers, got bool values"),
    "Z > 118": ("npz", dict(nuclear_charges=[6, 119]), r"nuclear_charges: 119 is not an element"),
    "Z = 0": ("npz", dict(nuclear_charges=[6, 0]), r"nuclear_charges: 0 is not an element"),
    "Z strings": ("npz", dict(nuclear_charges=["C", "H"]), r"nuclear_charges must be integers, got str"),
    "bool energies": ("npz", dict(energies=[True, False]), r"energies must be real numbers, got bool values"),
    "complex forces": ("npz", dict(forces=np.zeros((2, 2, 3)) + 1j), r"forces must be real numbers, got complex"),
    "atoms at one position": ("npz", dict(coords=np.zeros((2, 2, 3))), r"structure 0: atoms 0 and 1 are 0 A apart"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_values_are_one_line_data_errors(tmp_path, case):
    from peft_equi_train.data import read_dataset

    kind, change, message = DATA_CASES[case]
    if kind == "xyz":
        header = XYZ_HEADER.format(energy=change.get("energy", "-1.0"), pbc="T T T" if "cell" in change else "F F F")
        if "cell" in change:
            header = f'Lattice="{change["cell"]}" ' + header
        second = "0 0 0" if change.get("same") else "0 0 0.74"
        path = _extxyz(tmp_path / "bad.xyz", header, ["H 0 0 0 0 0 0", f"H {second} 0 0 0"])
    else:
        coords = [[[0, 0, 0], [0, 0, 1.1]]] * 2
        arrays = dict(nuclear_charges=[6, 1], coords=coords, energies=[0.0, 1.0], forces=np.zeros((2, 2, 3)))
        path = tmp_path / "bad.npz"
        np.savez(path, **{k: np.asarray(v) for k, v in (arrays | change).items()})
    with pytest.raises(DataError, match=message) as info:
        read_dataset(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_cell_smaller_than_the_cutoff_is_exact(small_mace):
    """A periodic cell narrower than the cutoff (each atom sees its own images) is accepted, and exact: the
    energy per atom and the forces are those of its 2x2x2 supercell."""
    from peft_equi.families.mace.potential import MacePotential

    potential = MacePotential(small_mace, "small")
    cell = Atoms("CO", positions=[[0, 0, 0], [1.1, 0.2, 0.1]], cell=[2.5, 2.6, 2.7], pbc=True)
    assert max(cell.cell.lengths()) < potential.r_max
    results = []
    for atoms in (cell, cell.repeat(2)):
        batch = potential.collate(potential.graphs([atoms]), torch.device("cpu"), torch.float64)
        energy, forces = potential.energy_forces(potential.model, batch, training=False)
        results.append((energy.item() / len(atoms), forces.detach()))
    assert abs(results[0][0] - results[1][0]) < 1e-10
    torch.testing.assert_close(results[1][1], results[0][1].repeat(8, 1), atol=1e-10, rtol=0)


def _family(name: str, tmp_path: Path):
    """A potential of each family, loaded in float64 from a float32 model where the family stores one."""
    from peft_equi.families.base import load_potential
    from peft_equi.families.mace.loading import save_mace_state
    from peft_equi.utils.dtype import torch_default_dtype

    if name == "mace":
        with torch_default_dtype(torch.float32):
            save_mace_state(build_mace("small"), tmp_path / "float32.pt")
        return load_potential(str(tmp_path / "float32.pt"), dtype=torch.float64)
    if name == "sevenn":
        return load_potential("7net-0", dtype=torch.float64)  # stored in float32
    from nequip_models import small_nequip

    return small_nequip("nequip.model.NequIPGNNModel", l_max=2, num_features=8, radial_mlp_depth=1)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mace", "sevenn", "nequip"])
def test_float64_is_float64_everywhere(family, tmp_path):
    """Translating a molecule by 1e4 A leaves its float64 forces unchanged to 1e-7 eV/A (float32 positions
    anywhere on the way would move them by ~1e-3 eV/A), and every floating tensor of the model is float64."""
    from peft_equi.utils.dtype import torch_default_dtype

    potential = _family(family, tmp_path)
    assert all(t.dtype == torch.float64 for t in potential.model.state_dict().values() if t.is_floating_point())
    atoms = molecules(1)[0]
    if family == "nequip":
        atoms.numbers[atoms.numbers == 6] = 7  # its model knows H, C, N, O
    moved = atoms.copy()
    moved.positions += 1e4
    forces = []
    for structure in (atoms, moved):
        with torch_default_dtype(torch.float32):  # torch's default, as in a command-line run
            graphs = potential.graphs([structure])
        batch = potential.collate(graphs, torch.device("cpu"), torch.float64)
        energy, force = potential.energy_forces(potential.model, batch, training=False)
        assert energy.dtype == force.dtype == torch.float64
        forces.append(force.detach())
    assert (forces[0] - forces[1]).abs().max() < 1e-7


def test_a_float32_mace_file_in_float64_has_exact_buffers(tmp_path):
    """Buffers computed from hyperparameters (U matrices, Bessel weights) are those of a float64 build, not the
    file's float32 roundings; parameters are the file's values."""
    from peft_equi.utils.dtype import torch_default_dtype

    potential = _family("mace", tmp_path)
    with torch_default_dtype(torch.float64):
        reference = build_mace("small")
    with torch_default_dtype(torch.float32):
        stored = build_mace("small")
    loaded, expected = potential.model.state_dict(), reference.state_dict()
    derived = [k for k in loaded if "U_matrix" in k or "bessel_weights" in k]
    assert derived and all(torch.equal(loaded[k], expected[k]) for k in derived)
    assert any(not torch.equal(expected[k].float().double(), expected[k]) for k in derived)  # float32 would differ
    params = dict(potential.model.named_parameters())
    assert all(torch.equal(params[k], v.double()) for k, v in stored.named_parameters())


@pytest.mark.slow
def test_to_cueq_of_a_float32_file_agrees_to_1e_10(tmp_path):
    from mace_models import batch_of, energy_forces

    potential = _family("mace", tmp_path)
    batch = batch_of(molecules(2))
    energy, forces = energy_forces(potential.model, batch)
    cueq = peft_equi.to_cueq(copy.deepcopy(potential.model), layout="ir_mul")
    energy_c, forces_c = energy_forces(cueq, batch)
    torch.testing.assert_close(energy_c, energy, atol=1e-10, rtol=0)
    torch.testing.assert_close(forces_c, forces, atol=1e-10, rtol=0)


# -- 3. unsafe or hanging -------------------------------------------------------------------------------------

BAD_NAMES = ["/tmp/x", "a/b", "..", ".", "a.b", "a b", "a\nb", "a\0b", "", "-x", "x" * 65, "a\\b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_adapter_names_are_safe_identifiers(tmp_path, name):
    model = peft_equi.get_peft_model(MixedNet(), "lora", rank=2)
    with pytest.raises(ConfigError, match="adapter name") as info:
        model.add_adapter(name, "lora", rank=2)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="adapter name"):
        peft_equi.get_peft_model(MixedNet(), "lora", adapter_name=name, rank=2)
    model.add_adapter("second_adapter-2", "lora", rank=2)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir() if p.is_dir()) == ["second_adapter-2"]


HOSTILE_PATTERNS = {
    "catastrophic backtracking": ("re:(.*.*.*)*X", "adapts no layer"),
    "backreference": (r"re:(a)\1", "not supported"),
    "lookahead": ("re:(?=x).*", "not supported"),
    "too large": ("re:((a{100}){100}){100}", "too large"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PATTERNS))
def test_untrusted_patterns_cannot_hang_loading(tmp_path, case):
    pattern, message = HOSTILE_PATTERNS[case]
    peft_equi.get_peft_model(MixedNet(), "lora", rank=2).save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta["config"]["rules"][0]["target"] = [pattern]
    meta["config_sha256"] = config_digest(meta["config"])  # a deliberate forgery: the checksum recomputed
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    started = time.perf_counter()
    with pytest.raises(PeftEquiError, match=message) as info:
        peft_equi.PeftModel.from_pretrained(MixedNet(), tmp_path)
    assert time.perf_counter() - started < 5 and "\n" not in str(info.value)


def test_linear_regex_agrees_with_re():
    """The linear-time engine gives re.fullmatch's answers (the presets' patterns and re's constructs)."""
    import re

    from peft_equi.core.presets import READOUT_PATTERN
    from peft_equi.core.regex import compile_regex

    patterns = [READOUT_PATTERN[3:], r"interactions\.[01]\.linear$", r"a{2,3}b?", r"(ab|a)*c", r"[^a-c\d_]+"]
    patterns += [r"\w+\.\d", r"^x.*y$", r"(a|b)*abb", r".*\bfoo\b.*", r"a*?b", r"(?:x|y){0,2}z", r"\s*a\Z", "", "a|"]
    names = ["readout", "interactions.0.linear", "interactions.2.linear", "x.reduce_input_to_hidden.w", "aab"]
    names += ["aaab", "ab", "ababc", "abac", "Q!", "ab.1", "x---y", "abb", "babb", "a foo b", "afoob", "z", "  a"]
    names += ["a\n", "", "-", "a", "reduce_hidden_to_energy.x", "products.0.linear"]
    for pattern in patterns:
        for name in names:
            assert compile_regex(pattern).fullmatch(name) == (re.fullmatch(pattern, name) is not None), (pattern, name)


def _broken_records(meta: dict) -> dict:
    return {
        "format as text": meta | {"format": "2"},
        "layers not a mapping": meta | {"layers": 5},
        "config not a mapping": meta | {"config": "lora"},
        "fingerprint entries of the wrong type": meta
        | {"base_fingerprint": {"form": "x", "tensors": {"w": {"sha256": 1, "numel": "2"}}}},
        "unknown config field": meta | {"config": meta["config"] | {"merge": True}},
        "unknown rule field": meta | {"config": meta["config"] | {"rules": [meta["config"]["rules"][0] | {"x": 1}]}},
        "not a mapping": [1, 2],
    }


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A finished run on a pickle-free MACE file (evaluate/merge/md load it without --trust-pickle), and data."""
    from peft_equi.families.mace.loading import save_mace_state
    from peft_equi.utils.dtype import torch_default_dtype

    with torch_default_dtype(torch.float64):
        root = tmp_path_factory.mktemp("cli-run")
        base = build_mace("small")
        save_mace_state(base, root / "base.pt")
        model = peft_equi.get_peft_model(base, "lora", rank=2)
        model.save_pretrained(root / "run" / "adapter")
        correction = {"atomic_numbers": [1, 6, 8], "delta_eV": [0.1, 0.2, 0.3]}
        (root / "run" / "energy_correction.json").write_text(json.dumps(correction))
        (root / "run" / "results.json").write_text("{}")
        structures = molecules(3)
        for atoms in structures:
            atoms.calc = SinglePointCalculator(atoms, energy=-100.0, forces=np.zeros((len(atoms), 3)))
        write(root / "data.xyz", structures)
        return root


@pytest.mark.parametrize("case", list(_broken_records({"config": {"rules": [{}]}})))
@pytest.mark.parametrize("command", ["evaluate", "merge"])
def test_malformed_adapter_records_are_one_line(cli_run, tmp_path, case, command):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cli_run / "run", run)
    config = run / "adapter" / "adapter_config.json"
    config.write_text(json.dumps(_broken_records(json.loads(config.read_text()))[case]))
    extra = ["--data", str(cli_run / "data.xyz")] if command == "evaluate" else ["--output", str(tmp_path / "m")]
    line = one_error_line(runner.invoke(app, [command, "--model", str(cli_run / "base.pt"), "--run", str(run), *extra]))
    assert str(config) in line
    assert not (tmp_path / "m.model").exists()


CLI_ERRORS = {
    "evaluate --batch-size 0": (["evaluate", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    "a run of another model": (["evaluate", "--model", "7net-0"], "belongs to another model"),
    "a run without results.json": (["evaluate", "--run", "{tmp}/unfinished"], "is not a finished run"),
    "a run directory that is not there": (["evaluate", "--run", "{tmp}/nowhere"], "run directory not found"),
    "merge of a run of another model": (["merge", "--model", "7net-0"], "belongs to another model"),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_cli_errors_are_one_line(cli_run, tmp_path, case):
    import shutil

    shutil.copytree(cli_run / "run", tmp_path / "unfinished")
    (tmp_path / "unfinished" / "results.json").unlink()
    extra, expected = CLI_ERRORS[case]
    command, *options = extra
    defaults = {"--model": str(cli_run / "base.pt"), "--run": str(cli_run / "run")}
    defaults |= {"--data": str(cli_run / "data.xyz")} if command == "evaluate" else {"--output": str(tmp_path / "m")}
    given = dict(zip(options[::2], [o.replace("{tmp}", str(tmp_path)) for o in options[1::2]]))
    args = [command, *[part for key, value in (defaults | given).items() for part in (key, value)]]
    assert expected in one_error_line(runner.invoke(app, args))
