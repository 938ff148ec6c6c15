"""Pretrain ``mace-organic-xtb``: our organic foundation model, MACE-OFF23-medium's structure on GFN2-xTB data.

Usage (resumable: run it again, with a larger ``--epochs`` to train on)::

    .venv/bin/python benchmarks/make_organic_xtb.py        # the data (benchmarks/data/organic-xtb; not in git)
    .venv/bin/python benchmarks/pretrain_organic.py --epochs 20

MACE-OFF23 cannot be downloaded here, and the MMEA/ELoRA papers' result is about adapting an
organic foundation model to molecules it has not seen.  This script trains one the way
MACE-OFF was made, with mace's own ``mace_run_train``: ScaleShiftMACE, hidden
``Nx0e + Nx1o`` (``--width``; MACE-OFF23-medium has 128), max_ell 3, correlation 3, two
interactions (``RealAgnosticInteractionBlock`` then ``RealAgnosticResidualInteractionBlock``),
r_max 5 A, 8 Bessel functions, radial MLP [64, 64, 64], readout ``16x0e``, RMS-force scaling,
E0s from GFN2-xTB isolated atoms, EMA, amsgrad, float32.  Data: the molecules of
``split.json``'s ``train`` (the ``valid`` molecules for validation: whole molecules held out);
the ``test`` molecules are evaluated at the end.

Outputs (``--output``, default ``benchmarks/results/pretrain/mace-organic-xtb``):
``checkpoints/`` (mace's resumable checkpoints: commit them to resume in another session),
``results.md`` / ``results.json`` (architecture, data, epochs, wall time, held-out errors and
the run record), ``log.txt`` (mace's log, appended), and the models
``benchmarks/models/mace-organic-xtb.model`` (a standard MACE file) and
``benchmarks/models/mace-organic-xtb.pt`` (pickle-free: config JSON + tensors, read by
``peft_equi.families.mace.loading.load_mace_model`` without ``trust_pickle``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from make_organic_xtb import DEFAULT_OUT as DATA
from make_organic_xtb import load_split, require_shards
from record import ROOT, finished, run_record, write_json

from peft_equi.utils.files import sha256

NAME = "mace-organic-xtb"


def write_split(data: Path, split: str, path: Path) -> int:
    """The split's snapshots as extxyz with ``REF_energy`` / ``REF_forces`` (mace's keys); how many."""
    from ase import Atoms
    from ase.io import write

    images = []
    for atoms in load_split(data, split):
        bare = Atoms(numbers=atoms.numbers, positions=atoms.positions)
        bare.info.update({"REF_energy": atoms.info["energy"], "molecule": atoms.info["molecule"]})
        bare.info["config_type"] = atoms.info["config_type"]
        bare.arrays["REF_forces"] = atoms.arrays["forces"]
        images.append(bare)
    write(path, images, format="extxyz")
    return len(images)


def isolated_energies(data: Path) -> dict[int, float]:
    """GFN2-xTB energies of the isolated atoms (eV), by atomic number."""
    from peft_equi_train.xtb import read_labelled

    return {int(a.numbers[0]): float(a.info["energy"]) for a in read_labelled(data / "isolated_atoms.xyz")}


def mace_arguments(args: argparse.Namespace, folder: Path, files: dict[str, Path], e0s: dict[int, float]) -> list[str]:
    """``mace_run_train`` options: MACE-OFF23-medium's structure at ``--width``."""
    return [
        "--name", NAME,
        "--model", "MACE",
        "--hidden_irreps", f"{args.width}x0e+{args.width}x1o",
        "--max_ell", "3",
        "--correlation", "3",
        "--num_interactions", "2",
        "--interaction_first", "RealAgnosticInteractionBlock",
        "--interaction", "RealAgnosticResidualInteractionBlock",
        "--r_max", "5.0",
        "--num_radial_basis", "8",
        "--num_cutoff_basis", "5",
        "--radial_MLP", "[64, 64, 64]",
        "--MLP_irreps", "16x0e",
        "--scaling", "rms_forces_scaling",
        "--E0s", repr(e0s),  # a Python dict with int keys (mace reads it with ast.literal_eval)
        "--train_file", str(files["train"]),
        "--valid_file", str(files["valid"]),
        "--energy_key", "REF_energy",
        "--forces_key", "REF_forces",
        "--loss", "weighted",
        "--energy_weight", str(args.energy_weight),
        "--forces_weight", str(args.forces_weight),
        "--batch_size", str(args.batch_size),
        "--valid_batch_size", "20",
        "--lr", str(args.lr),
        "--amsgrad",
        "--ema",
        "--ema_decay", "0.99",
        "--scheduler_patience", "2",
        "--max_num_epochs", str(args.epochs),
        "--patience", "1000",
        "--eval_interval", "1",
        "--error_table", "PerAtomMAE",
        "--default_dtype", "float32",
        "--device", args.device,
        "--seed", str(args.seed),
        "--num_workers", "0",
        "--restart_latest",
        "--save_cpu",
        "--checkpoints_dir", str(folder / "checkpoints"),
        "--model_dir", str(folder / "runs"),
        "--log_dir", str(folder / "runs" / "logs"),
        "--results_dir", str(folder / "runs" / "results"),
    ]  # fmt: skip


def mace_environment(threads: int) -> dict[str, str]:
    """The environment of ``mace_run_train``: unbuffered output, ``threads`` OpenMP/BLAS threads.

    make_organic_xtb (imported here for the splits) sets one thread in this process's
    environment, for tblite; mace_run_train must not inherit that (it did until 2026-12-02: the
    first four passes of mace-organic-xtb ran on one core).
    """
    threads_vars = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return os.environ | {"PYTHONUNBUFFERED": "1"} | {var: str(threads) for var in threads_vars}


def _latest_checkpoint(checkpoints: Path) -> Path | None:
    """mace's checkpoint with the highest epoch index (``<name>_run-<seed>_epoch-<index>.pt``), or ``None``."""
    found = list(checkpoints.glob(f"{NAME}_run-*_epoch-*.pt"))
    return max(found, key=lambda f: int(f.stem.rsplit("-", 1)[1])) if found else None


def start_stage_two(checkpoints: Path, lr: float) -> str | None:
    """Set the learning rate in mace's latest checkpoint to ``lr`` and restart its plateau scheduler.

    Stage two of MACE's recipe, at a lower learning rate.  mace's own stage two (``--swa``)
    crashes on this stack at its first weight-averaging update (``../shared/NOTES-anchors.md``),
    so the stage is a resumed run with the lower rate written into the checkpoint (mace restores
    the optimizer's rate from it) and, as ``main`` passes them, the stage's loss weights.  The
    scheduler's best loss is forgotten (the loss changes with the weights).  Returns a line for
    the log, or ``None`` when the checkpoint already runs at ``lr``; the log lines keep the words
    ("second stage: ...") of the committed ``results/pretrain/mace-organic-xtb/log.txt``, which
    :func:`learning_curve` reads.
    """
    import torch

    path = _latest_checkpoint(checkpoints)
    if path is None:
        raise SystemExit(f"--stage-two-lr resumes a run, but {checkpoints} holds no checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    old = groups[0]["lr"]
    if old == lr:
        return None
    for group in groups:
        group["lr"] = lr
    scheduler = state["lr_scheduler"]
    scheduler.update(_last_lr=[lr] * len(groups), best=scheduler["mode_worse"], num_bad_epochs=0)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return f"second stage: learning rate {old} -> {lr} in {path.name} (plateau scheduler restarted)"


_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO: (.*)$")
_LOSS = re.compile(r"WeightedEnergyForcesLoss\(energy_weight=([\d.]+), forces_weight=([\d.]+)\)")
_STAGE = re.compile(r"second stage: learning rate \S+ -> (\S+) in")
_VALID = re.compile(r"^(Initial|Epoch \d+): .*MAE_E_per_atom=\s*([\d.]+) meV, MAE_F=\s*([\d.]+) meV / A")


def learning_curve(folder: Path, lr: float) -> list[dict]:
    """Every finished pass over the training set, from mace's logs (``log.txt`` and ``runs/logs/*.log``).

    mace writes an ``Initial`` validation when a run starts or resumes and an ``Epoch <index>``
    line when a pass ends; its epoch index repeats after a resume, so passes are counted from
    the lines, in time order (both logs hold some of the same lines: deduplicated).  A pass's
    wall time runs from the line before it (a start or the previous pass); its loss weights
    are the last ones mace printed before it, its learning rate ``lr`` (mace's plateau
    schedule from it) or the last ``--stage-two-lr`` written into ``log.txt`` before it.
    """
    lines = set()
    for log in [folder / "log.txt", *sorted((folder / "runs" / "logs").glob("*.log"))]:
        if not log.is_file():
            continue
        pending = []  # our own lines carry no time: they take the time of mace's next line
        for text in log.read_text().splitlines():
            if text.startswith("# second stage: learning rate"):
                pending.append(text)
            elif m := _LINE.match(text):
                lines.update((m.group(1), 0, marker) for marker in pending)
                lines.add((m.group(1), 1, m.group(2)))
                pending = []
    curve, weights, previous = [], (None, None), None
    for stamp, _, message in sorted(lines):
        when = datetime.datetime.fromisoformat(stamp)
        if stage := _STAGE.search(message):
            lr = float(stage.group(1))
        elif loss := _LOSS.search(message):
            weights = (float(loss.group(1)), float(loss.group(2)))
        elif valid := _VALID.match(message):
            if valid.group(1) != "Initial" and previous is not None:
                curve.append({
                    "finished": stamp[:16],
                    "wall_s": (when - previous).total_seconds(),
                    "lr": lr,
                    "energy_weight": weights[0],
                    "forces_weight": weights[1],
                    "valid_energy_per_atom_mae_meV": float(valid.group(2)),
                    "valid_forces_mae_meV_per_A": float(valid.group(3)),
                })  # fmt: skip
            previous = when
    return curve


def held_out_errors(model_file: Path, data: Path, split: str) -> dict[str, float]:
    """Energy-per-atom and force errors of the model on one split's molecules (meV, meV/A)."""
    import torch

    from peft_equi.families.mace.calculator import mace_calculator
    from peft_equi.families.mace.loading import load_mace_model

    model = load_mace_model(model_file).to(torch.float64)
    calc = mace_calculator(model)
    de, df = [], []
    for atoms in load_split(data, split):
        reference_e, reference_f = atoms.info["energy"], atoms.arrays["forces"]
        probe = atoms.copy()
        probe.calc = calc
        de.append((probe.get_potential_energy() - reference_e) / len(atoms))
        df.append((probe.get_forces() - reference_f).ravel())
    de, df = np.asarray(de) * 1000, np.concatenate(df) * 1000
    return {
        "structures": len(de),
        "energy_per_atom_mae_meV": float(np.abs(de).mean()),
        "energy_per_atom_rmse_meV": float(np.sqrt((de**2).mean())),
        "forces_mae_meV_per_A": float(np.abs(df).mean()),
        "forces_rmse_meV_per_A": float(np.sqrt((df**2).mean())),
    }


def train(args: argparse.Namespace, folder: Path, files: dict[str, Path], e0s: dict[int, float], argv) -> None:
    """Run (or resume) ``mace_run_train``, appending its output to ``log.txt``."""
    with (folder / "log.txt").open("a") as log:
        log.write(f"\n# pretrain_organic.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")
        if args.stage_two_lr is not None:
            change = start_stage_two(folder / "checkpoints", args.stage_two_lr)
            log.write(f"# {change or 'second stage continues'}\n")
        log.flush()
        command = [str(Path(sys.executable).with_name("mace_run_train")), *mace_arguments(args, folder, files, e0s)]
        # unbuffered: log.txt shows every epoch as it ends, also when the run is stopped midway
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=mace_environment(args.threads))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="output folder of make_organic_xtb.py")
    p.add_argument("--width", type=int, default=64, help="N of the hidden irreps Nx0e+Nx1o")
    p.add_argument("--epochs", type=int, default=20, help="total epochs (a rerun with more epochs continues)")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--energy-weight", type=float, default=1.0, help="weight of the per-atom energy MSE")
    p.add_argument("--forces-weight", type=float, default=100.0)
    p.add_argument(
        "--stage-two-lr",
        type=float,
        help="resume at this learning rate (stage two; give its loss weights too)",
    )
    p.add_argument(
        "--export-only",
        action="store_true",
        help="only write the model files and results from the model mace last wrote (no training)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of mace_run_train")
    p.add_argument("--device", default="cpu", help="torch device for mace_run_train: cpu or cuda")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "pretrain" / NAME)
    p.add_argument("--models-dir", type=Path, default=ROOT / "benchmarks" / "models", help="where the model files go")
    args = p.parse_args(argv)
    require_shards(args.data)  # the shards are not in git: a one-line error with the command if any is missing
    record = run_record()
    folder = args.output
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    files = {split: folder / "runs" / f"{split}.extxyz" for split in ("train", "valid")}
    counts = {split: write_split(args.data, split, path) for split, path in files.items()}
    e0s = isolated_energies(args.data)
    started = time.perf_counter()
    if args.export_only:
        if not (folder / "runs" / f"{NAME}.model").is_file():
            sys.exit(f"--export-only: mace wrote no model in {folder / 'runs'} yet")
    else:
        train(args, folder, files, e0s, argv)
    wall = time.perf_counter() - started

    args.models_dir.mkdir(parents=True, exist_ok=True)
    model_file = args.models_dir / f"{NAME}.model"
    shutil.copyfile(folder / "runs" / f"{NAME}.model", model_file)
    from peft_equi.families.mace.loading import load_mace_model, save_mace_state

    model = load_mace_model(model_file, trust_pickle=True)
    save_mace_state(model, args.models_dir / f"{NAME}.pt")
    errors = {split: held_out_errors(args.models_dir / f"{NAME}.pt", args.data, split) for split in ("valid", "test")}
    curve = learning_curve(folder, args.lr)
    wall_total = sum(row["wall_s"] for row in curve)
    parameters = sum(t.numel() for t in model.parameters())
    summary = {
        "architecture": {"hidden_irreps": f"{args.width}x0e+{args.width}x1o", "max_ell": 3, "correlation": 3,
                         "num_interactions": 2, "r_max": 5.0, "num_bessel": 8, "radial_MLP": [64, 64, 64],
                         "parameters": parameters},
        "data": {"folder": str(args.data), "configurations": counts,
                 "record_sha256": sha256(args.data / "record.json")},
        "training": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "passes": curve,
        "wall_time_s_this_invocation": wall,
        "wall_time_s_total": wall_total,
        "held_out": errors,
    }  # fmt: skip
    write_json(folder / "results.json", summary | {"record": finished(record)})
    lines = [
        f"# {NAME}: MACE-OFF23-medium's structure at width {args.width}, pretrained on GFN2-xTB",
        "",
        f"{parameters:,} parameters. Trained with `mace_run_train` on {counts['train']:,} configurations of the "
        f"training molecules, validated on {counts['valid']:,} of whole held-out molecules: {len(curve)} passes "
        f"over the training set, batch {args.batch_size}, float32, EMA 0.99, amsgrad; {wall_total / 3600:.2f} h of "
        "training wall time on this machine in all (passes below; a run stopped midway is not counted).",
        "",
        "| held-out molecules | structures | E/atom MAE (meV) | E/atom RMSE (meV) | F MAE (meV/A) | F RMSE (meV/A) |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {split} | {e['structures']} | {e['energy_per_atom_mae_meV']:.2f} | {e['energy_per_atom_rmse_meV']:.2f} "
            f"| {e['forces_mae_meV_per_A']:.1f} | {e['forces_rmse_meV_per_A']:.1f} |"
            for split, e in errors.items()
        ],
        "",
        "Validation (the held-out `valid` molecules, EMA weights) after each pass, from mace's logs:",
        "",
        "| pass | finished (UTC) | wall (min) | lr | loss weights E / F | E/atom MAE (meV) | F MAE (meV/A) |",
        "|---:|---|---:|---:|---|---:|---:|",
        *[
            f"| {i} | {row['finished']} | {row['wall_s'] / 60:.0f} | {row['lr']:g} | "
            f"{row['energy_weight']:g} / {row['forces_weight']:g} | {row['valid_energy_per_atom_mae_meV']:.2f} | "
            f"{row['valid_forces_mae_meV_per_A']:.2f} |"
            for i, row in enumerate(curve, 1)
        ],
        "",
        f"Models: `benchmarks/models/{NAME}.model` (MACE's format; pickled: `--trust-pickle`) and "
        f"`benchmarks/models/{NAME}.pt` (pickle-free). Command and versions: `results.json`.",
        "",
    ]
    (folder / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
