"""rMD17 side by side: every fine-tuning method from one pretrained model, on one molecule.

Usage::

    python benchmarks/rmd17.py --quick --molecule aspirin            # SevenNet-0, all methods, < 1 h on 2 cores
    python benchmarks/rmd17.py --molecule ethanol --methods mmea     # full mode (the papers' settings)
    python benchmarks/rmd17.py --quick --molecule aspirin --ablations   # MMEA ablations

Protocol (MMEA / ELoRA papers): 50 training + 50 validation configurations drawn (seeded)
from the 1000-configuration train split 01, test on the 1000-configuration test split 01;
energy MAE per configuration (meV) and force-component MAE (meV/A).  Full mode uses the
papers' optimisation settings (Adam amsgrad, lr 0.005, batch 5, 500 epochs, EMA 0.995,
energy/forces weights 1/1000, ReduceLROnPlateau); ``--quick`` trains 10 epochs in float32
and is for smoke-testing the comparison, not for quoting.

Each method runs through the same engine as ``peft-equi finetune`` (per-element energy
shifts fitted on the 50 training structures, since SevenNet-0's PBE reference differs from
rMD17's).  Results go to ``benchmarks/results/rmd17/<model>-<molecule>-<mode>/``:
``results.md`` (tables), ``results.json`` (every number plus the run record: command, git
commit, package versions, machine), ``validation_loss.png`` and ``test_errors.png``.
Finished methods are kept, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from record import ROOT, run_record, write_json

from peft_equi.potentials import load_potential
from peft_equi.training.config import FinetuneConfig
from peft_equi.training.engine import Finetuner

SHARED_DATA = ROOT.parent / "shared" / "data"
MOLECULES = ("aspirin", "benzene", "ethanol", "malonaldehyde", "naphthalene", "salicylic", "toluene", "uracil")

#: label -> (adapter or preset, options); applies to every model.
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full", {}),
    "readout-only": ("readout-only", {}),
    "lora": ("lora", {"rank": 8}),
    "elora": ("elora", {"rank": 8}),
    "mmea": ("mmea", {"rank": 16}),
    "bitfit": ("bitfit", {}),
    "film": ("film", {}),
}
#: The papers' recipes, which name MACE's modules: used when the model is a MACE model.
MACE_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "mmea-paper": ("mmea-paper", {"rank": 16}),
    "elora-paper": ("elora-paper", {"rank": 16}),
    "mace-lora": ("mace-lora", {"rank": 4}),
}
#: The MMEA paper's ablation table.
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "mmea": ("mmea", {"rank": 16}),
    "mmea, no activation": ("mmea", {"rank": 16, "activation": "identity"}),
    "mmea, no input-head reuse": ("mmea", {"rank": 16, "heads": "separate"}),
    "mmea, no scalar modulation": ("mmea", {"rank": 16, "scalar_modulation": False}),
    "mmea, no higher-order modulation": ("mmea", {"rank": 16, "higher_order_modulation": False}),
    "mmea, shared higher-order gains": ("mmea", {"rank": 16, "gain_sharing": "irrep"}),
    "readout only": ("readout-only", {}),
    "conventional adapter (not equivariant)": ("conventional", {}),
}
#: Published MACE-OFF23-medium -> rMD17 aspirin test errors (energy meV, forces meV/A).
PAPER_ASPIRIN = {"full": (9.7, 23.9), "elora": (8.0, 18.3), "mmea": (7.3, 16.4)}

QUICK = {"epochs": 10, "dtype": "float32"}
FULL = {"epochs": 500, "dtype": "float64"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--molecule", default="aspirin", choices=MOLECULES)
    p.add_argument("--quick", action="store_true", help="10 epochs in float32 (default: full mode, 500 epochs)")
    p.add_argument("--model", default="7net-0", help="7net-0, or a MACE model file (e.g. from pretrain_mace.py)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled MACE .model file")
    p.add_argument("--methods", nargs="+", help="subset of method labels (default: all that apply)")
    p.add_argument("--ablations", action="store_true", help="run the MMEA ablations instead of the methods")
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA / "rmd17", help="folder with rmd17_*_01.npz")
    p.add_argument("--epochs", type=int, help="override the mode's epochs")
    p.add_argument("--dtype", choices=("float32", "float64"), help="override the mode's dtype")
    p.add_argument("--n-test", type=int, help="evaluate only the first n test configurations")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, help="results folder (default: benchmarks/results/rmd17/...)")
    return p.parse_args(argv)


def methods_for(args: argparse.Namespace, is_mace: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """The methods this run compares, in table order; unknown labels are an error."""
    available = dict(ABLATIONS) if args.ablations else METHODS | (MACE_PRESETS if is_mace else {})
    if not args.methods:
        return available
    unknown = [m for m in args.methods if m not in available]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; available here: {list(available)}")
    return {m: available[m] for m in args.methods}


def _read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def run_method(label: str, adapter: str, options: dict, potential, config: dict, folder: Path) -> dict[str, Any]:
    """Fine-tune a copy of ``potential`` with one method (or reuse its finished run); its numbers."""
    done = folder / "method.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    finetuner = Finetuner(
        FinetuneConfig(adapter=adapter, adapter_options=options, output=folder, **config),
        potential=copy.deepcopy(potential),
    )
    result = finetuner.run()
    rows = _read_metrics(folder / "metrics.csv")
    record = {
        "label": label,
        "adapter": adapter,
        "options": options,
        "trainable_parameters": result["trainable_parameters"],
        "base_parameters": sum(p.numel() for p in potential.model.parameters()),
        "before": {split: e.summary() for split, e in result["before"].items()},
        "after": {split: e.summary() for split, e in result["after"].items()},
        "mergeable": result.get("merged_model") is not None,
        "epoch_time_s": sorted(r["time_s"] for r in rows)[len(rows) // 2],
        "wall_time_s": time.perf_counter() - started,
        "curve": [{k: r[k] for k in ("epoch", "train_loss", "valid_loss", "lr")} for r in rows],
    }
    write_json(done, record)
    return record


def epochs_to_reach(curve: list[dict[str, float]], target: float) -> int | None:
    """First epoch whose validation loss is at most ``target``."""
    return next((int(r["epoch"]) for r in curve if r["valid_loss"] <= target), None)


def markdown(results: list[dict[str, Any]], settings: dict[str, Any], notes: list[str]) -> str:
    """The side-by-side tables."""
    best = min(r["curve"][-1]["valid_loss"] for r in results)
    target = 2 * best
    lines = [
        f"# rMD17 {settings['molecule']}: {settings['model']}, {settings['mode']} mode",
        "",
        f"{settings['n_train']} training + {settings['n_valid']} validation configurations (seed {settings['seed']}) "
        f"from the train split, test on {settings['n_test']} test-split configurations; {settings['epochs']} epochs, "
        f"{settings['dtype']}, lr {settings['lr']}, batch {settings['batch_size']}, EMA {settings['ema_decay']}, "
        f"forces weight {settings['forces_weight']}.",
        "",
        "| method | trainable | % of model | test E MAE (meV) | test F MAE (meV/A) | before: E / F | "
        f"epochs to valid loss <= {target:.3g} | s/epoch | mergeable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        after, before = r["after"]["test"], r["before"]["test"]
        reached = epochs_to_reach(r["curve"], target)
        lines.append(
            f"| {r['label']} | {r['trainable_parameters']:,} | "
            f"{100 * r['trainable_parameters'] / r['base_parameters']:.1f} | {after['energy_mae_meV']:.1f} | "
            f"{after['forces_mae_meV_per_A']:.1f} | {before['energy_mae_meV']:.1f} / "
            f"{before['forces_mae_meV_per_A']:.1f} | {reached if reached is not None else 'not reached'} | "
            f"{r['epoch_time_s']:.1f} | {'yes' if r['mergeable'] else 'no'} |"
        )
    lines += [
        "",
        "'before' is the pretrained model with the fitted per-element energy shifts, before any training. "
        f"The convergence target is twice the best final validation loss of this run ({best:.3g}).",
        "",
        "Published (MACE-OFF23-medium -> aspirin, test E / F MAE): "
        + ", ".join(f"{k} {e} / {f}" for k, (e, f) in PAPER_ASPIRIN.items())
        + ".",
        "",
        "## Differences from the papers",
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], folder: Path, title: str) -> None:
    """Validation loss against epoch per method, and test errors per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.semilogy([c["epoch"] for c in r["curve"]], [c["valid_loss"] for c in r["curve"]], label=r["label"])
    ax.set(xlabel="epoch", ylabel="validation loss (EMA weights)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "validation_loss.png", dpi=120)
    plt.close(fig)

    labels = [r["label"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, unit in zip(
        axes, ("energy_mae_meV", "forces_mae_meV_per_A"), ("energy MAE (meV)", "force MAE (meV/A)")
    ):
        ax.barh(labels, [r["after"]["test"][key] for r in results])
        ax.invert_yaxis()
        ax.set(xlabel=f"test {unit}", title=title)
    fig.tight_layout()
    fig.savefig(folder / "test_errors.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = QUICK if args.quick else FULL
    epochs, dtype = args.epochs or mode["epochs"], args.dtype or mode["dtype"]
    train = args.data_dir / f"rmd17_{args.molecule}_train_01.npz"
    test = args.data_dir / f"rmd17_{args.molecule}_test_01.npz"
    for path in (train, test):
        if not path.is_file():
            sys.exit(f"rMD17 file not found: {path} (give --data-dir)")
    model_name = Path(args.model).stem if Path(args.model).is_file() else args.model
    mode_name = ("quick" if args.quick else "full") + ("-ablations" if args.ablations else "")
    folder = args.output or ROOT / "benchmarks" / "results" / "rmd17" / f"{model_name}-{args.molecule}-{mode_name}"
    folder.mkdir(parents=True, exist_ok=True)

    potential = load_potential(args.model, dtype=getattr(torch, dtype), trust_pickle=args.trust_pickle)
    is_mace = type(potential).__name__.lower().startswith("mace")
    methods = methods_for(args, is_mace)
    config = {
        "model": args.model,
        "trust_pickle": args.trust_pickle,
        "train": train,
        "test": test,
        "n_train": 100,
        "valid_fraction": 0.5,
        "n_test": args.n_test,
        "epochs": epochs,
        "dtype": dtype,
        "seed": args.seed,
        "eval_batch_size": 25,
        "progress": False,
        "plots": False,
    }
    defaults = FinetuneConfig(model=args.model, train=train)
    settings = {
        "molecule": args.molecule,
        "model": model_name,
        "mode": mode_name,
        "n_train": 50,
        "n_valid": 50,
        "n_test": args.n_test or 1000,
        "epochs": epochs,
        "dtype": dtype,
        "seed": args.seed,
    } | {k: getattr(defaults, k) for k in ("lr", "batch_size", "ema_decay", "forces_weight", "energy_weight")}
    notes = [
        "Our rMD17 copy is split 01 of the rMD17 release; the papers average over splits or use split 01.",
        f"{dtype} throughout" + (" (the papers train in float64)." if dtype == "float32" else "."),
    ]
    if not args.quick and epochs != FULL["epochs"]:
        notes.append(f"{epochs} epochs instead of the papers' 500.")
    if args.quick:
        notes.append("Quick mode: 10 epochs; the numbers show the setup works, they are not converged.")
    if not is_mace:
        notes.append(
            f"{model_name} was pretrained on inorganic crystals (PBE), not organic molecules like MACE-OFF; "
            "this probes the papers' stated limitation. The paper presets name MACE's modules and are run "
            "only for MACE models."
        )
    results = []
    for label, (adapter, options) in methods.items():
        print(f"[{label}] {adapter} {options}", flush=True)
        slug = label.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        results.append(run_method(label, adapter, options, potential, config, folder / "runs" / slug))
        after = results[-1]["after"]["test"]
        print(f"[{label}] test E {after['energy_mae_meV']:.1f} meV, F {after['forces_mae_meV_per_A']:.1f} meV/A")
        title = f"rMD17 {args.molecule}, {model_name} ({mode_name})"
        (folder / "results.md").write_text(markdown(results, settings, notes))
        plot(results, folder, title)
        write_json(
            folder / "results.json",
            {"settings": settings, "notes": notes, "methods": results, "record": run_record(started)},
        )
    print((folder / "results.md").read_text())


if __name__ == "__main__":
    main()
