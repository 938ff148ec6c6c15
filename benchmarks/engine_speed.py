"""Epoch time of ``peft-equi finetune`` against mace's own ``mace_run_train``, side by side in one run.

Usage::

    python benchmarks/engine_speed.py                       # mace-organic-xtb, rMD17 ethanol, float64
    python benchmarks/engine_speed.py --epochs 8 --rounds 3 --threads 1

Both fine-tune every weight of the same model (``full``) on the same 50 training and 50
validation structures (the engine's draw: 100 structures of rMD17 split 01 with seed 0, split
in half), with the papers' settings: float64, batch 5, validation every epoch (batches of 25)
with the EMA weights, energy and force weights 1 / 1000, Adam amsgrad lr 0.005, clipping 100,
mace's ``--E0s average``.  The loss differs in one term that costs nothing to compute: mace
0.3.16 has no total-energy loss any more (its ``--loss ef`` falls through to the per-atom
``WeightedEnergyForcesLoss`` with weights 1 / 1, ignoring the given weights), so mace runs
``--loss weighted`` (per-atom energy error) and ours the papers' total-energy loss.  Each round
runs ours, then mace's, each in its own process with ``--threads`` OpenMP/torch threads, so that
drift of a shared machine hits both.

Epoch times: ours from ``metrics.csv`` (``time_s``: training + validation), mace's from its
log, the time between consecutive ``Epoch N`` lines (training, validation and its checkpoint).
The first epoch of each is left out (warm-up).  Writes
``benchmarks/results/engine-speed/{results.md,results.json}``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from record import ROOT, add_run_arguments, finished, start_run, write_json

SHARED = ROOT.parent / "shared" / "data" / "rmd17"
MODEL = ROOT / "benchmarks" / "models" / "mace-organic-xtb.model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecule", default="ethanol")
    p.add_argument("--model", type=Path, default=MODEL, help="a MACE .model file (mace_run_train's foundation)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (the first is not timed)")
    p.add_argument("--rounds", type=int, default=2, help="ours-then-mace rounds")
    p.add_argument("--data-dir", type=Path, default=SHARED)
    add_run_arguments(p, dtype="float64")
    args = p.parse_args(argv)
    args.threads = args.threads or 1
    return args


def write_splits(args: argparse.Namespace, folder: Path) -> dict[str, Path]:
    """The engine's 50 + 50 draw, written as extxyz for mace (``REF_energy``, ``REF_forces``)."""
    from ase.io import write

    from peft_equi_train.config import FinetuneConfig
    from peft_equi_train.engine import load_splits

    config = FinetuneConfig(**ours_options(args, folder / "probe"))
    train, valid, _ = load_splits(config)
    paths = {}
    for name, data in (("train", train), ("valid", valid)):
        structures = []
        for atoms, energy, forces in zip(data.atoms, data.energies, data.forces):
            atoms = atoms.copy()
            atoms.info["REF_energy"] = float(energy)
            atoms.arrays["REF_forces"] = forces
            structures.append(atoms)
        paths[name] = folder / f"{name}.xyz"
        write(paths[name], structures, format="extxyz")
    return paths


def ours_options(args: argparse.Namespace, output: Path) -> dict:
    """``peft-equi finetune``'s options: the papers' settings, full fine-tuning, no stage two (mace's crashes here)."""
    return {
        "model": str(args.model),
        "trust_pickle": True,
        "adapter": "full",
        "train": args.data_dir / f"rmd17_{args.molecule}_train_01.npz",
        "n_train": 100,
        "valid_fraction": 0.5,
        "e0s": "average",
        "epochs": args.epochs,
        "dtype": args.dtype,
        "eval_batch_size": 25,
        "output": output,
        "overwrite": True,
        "progress": False,
        "plots": False,
    }


def flags(options: dict) -> list[str]:
    """Command-line flags of ``peft-equi finetune`` for ``options``."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        out += (
            ([flag] if value else [f"--no-{key.replace('_', '-')}"]) if isinstance(value, bool) else [flag, str(value)]
        )
    return out


def mace_arguments(args: argparse.Namespace, files: dict[str, Path], folder: Path) -> list[str]:
    """``mace_run_train`` with the same settings (``--loss ef``, EMA 0.995, amsgrad, clipping 100)."""
    return [
        "--name", "speed", "--foundation_model", str(args.model), "--multiheads_finetuning", "False",
        "--train_file", str(files["train"]), "--valid_file", str(files["valid"]),
        "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", "average",
        "--loss", "weighted", "--energy_weight", "1", "--forces_weight", "1000",
        "--batch_size", "5", "--valid_batch_size", "25", "--lr", "0.005", "--amsgrad", "--weight_decay", "1e-8",
        "--ema", "--ema_decay", "0.995", "--clip_grad", "100", "--scheduler_patience", "5", "--lr_factor", "0.8",
        "--max_num_epochs", str(args.epochs), "--eval_interval", "1", "--patience", "1000",
        "--error_table", "TotalMAE", "--default_dtype", args.dtype, "--device", "cpu", "--seed", "0",
        "--num_workers", "0", "--save_cpu",
        "--checkpoints_dir", str(folder / "checkpoints"), "--model_dir", str(folder),
        "--log_dir", str(folder / "logs"), "--results_dir", str(folder / "results"),
    ]  # fmt: skip


def environment(threads: int) -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def run_ours(args: argparse.Namespace, folder: Path) -> list[float]:
    """Seconds per epoch of ``peft-equi finetune`` (the command line, in its own process as mace's)."""
    command = [sys.executable, "-m", "peft_equi_train", "--quiet", "finetune", *flags(ours_options(args, folder))]
    subprocess.run(command, cwd=ROOT, env=environment(args.threads), check=True)
    with (folder / "metrics.csv").open() as handle:
        return [float(row["time_s"]) for row in csv.DictReader(handle)]


EPOCH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) INFO: (Initial|Epoch (\d+)):")


def run_mace(args: argparse.Namespace, files: dict[str, Path], folder: Path) -> list[float]:
    """Seconds per epoch of ``mace_run_train``: between consecutive validation lines of its log."""
    command = [str(Path(sys.executable).with_name("mace_run_train")), *mace_arguments(args, files, folder)]
    log = folder / "mace.log"
    with log.open("w") as handle:
        subprocess.run(command, cwd=folder, env=environment(args.threads), check=True, stdout=handle, stderr=handle)
    stamps = []
    for line in log.read_text().splitlines():
        match = EPOCH_LINE.match(line)
        if match:
            stamps.append(datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f"))
    if len(stamps) != args.epochs + 1:  # 'Initial' and one line per epoch
        raise SystemExit(f"expected {args.epochs + 1} validation lines in {log}, found {len(stamps)}")
    return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    record = start_run(args)
    out = args.output or ROOT / "benchmarks" / "results" / "engine-speed"
    work = out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    files = write_splits(args, work)
    rounds = []
    for r in range(args.rounds):
        mace_folder = work / f"mace-{r}"
        mace_folder.mkdir(exist_ok=True)
        ours = run_ours(args, work / f"ours-{r}")
        theirs = run_mace(args, files, mace_folder)
        rounds.append({"ours_s": ours, "mace_s": theirs})
        print(f"round {r}: ours {statistics.median(ours[1:]):.2f} s/epoch, mace {statistics.median(theirs[1:]):.2f}")
    ratios = [statistics.median(x["ours_s"][1:]) / statistics.median(x["mace_s"][1:]) for x in rounds]
    summary = {
        "ours_s_per_epoch": statistics.median(t for x in rounds for t in x["ours_s"][1:]),
        "mace_s_per_epoch": statistics.median(t for x in rounds for t in x["mace_s"][1:]),
        "ratio_per_round": ratios,
    }
    lines = [
        f"# Epoch time: peft-equi finetune vs mace_run_train ({args.molecule}, {args.model.name})",
        "",
        f"Full fine-tuning, 50 + 50 structures, {args.dtype}, batch 5, validation every epoch (EMA weights), "
        f"{args.threads} thread(s) each, {args.epochs} epochs per run (the first not timed), {args.rounds} rounds "
        "(ours, then mace's).",
        "",
        "| | median s/epoch |",
        "|---|---:|",
        f"| peft-equi finetune | {summary['ours_s_per_epoch']:.2f} |",
        f"| mace_run_train | {summary['mace_s_per_epoch']:.2f} |",
        "",
        "ours / mace per round: " + ", ".join(f"{r:.3f}" for r in ratios),
        "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(
        out / "results.json", {"summary": summary, "rounds": rounds, "settings": settings, "record": finished(record)}
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
