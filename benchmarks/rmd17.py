"""rMD17 side by side: every fine-tuning method from one pretrained model, on one molecule.

Usage::

    python benchmarks/rmd17.py --quick --molecule aspirin            # SevenNet-0, all methods, < 1 h on 2 cores
    python benchmarks/rmd17.py --molecule ethanol --methods mmea     # full mode (the papers' settings)
    python benchmarks/rmd17.py --quick --ablations --model mace.model --trust-pickle   # MMEA ablations (MACE only)

Protocol (MMEA / ELoRA papers): 50 training + 50 validation configurations drawn (seeded)
from the 1000-configuration train split 01, test on the 1000-configuration test split 01;
energy MAE per configuration (meV) and force-component MAE (meV/A).  Full mode uses the
papers' optimisation settings (Adam amsgrad, lr 0.005, batch 5, 500 epochs, EMA 0.995,
energy/forces weights 1/1000 on the total energy, ReduceLROnPlateau, stage two (mace ``--swa``)
over the last 100 epochs, the best-validation model tested); ``--quick`` is the same protocol
shrunk to 10 epochs (stage two in the last 2) in float32
and is for smoke-testing the comparison, not for quoting.

Each method runs through the same engine as ``peft-equi finetune`` (per-element energy
shifts fitted on the 50 training structures, since SevenNet-0's PBE reference differs from
rMD17's).  Results go to ``benchmarks/results/rmd17/<model>-<molecule>-<mode>/``:
``results.md`` (tables), ``results.json`` (every number plus the run record: command, git
commit, package versions, machine), ``validation_forces.png`` and ``test_errors.png``.
Finished methods are kept, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from comparison import (
    add_common_arguments,
    engine_options,
    md_settings,
    optimisation_settings,
    protocol,
    results_table,
    run_comparison,
    schedule_name,
    select_methods,
    start,
    with_replay,
)
from record import ROOT

from peft_equi.families import load_potential

SHARED_DATA = ROOT.parent / "shared" / "data"

#: Published MACE-OFF23-medium -> rMD17 aspirin test errors (energy meV, forces meV/A), from the
#: record that README.md and docs/ also quote.
PAPER_ASPIRIN = {
    method: (errors["energy_mae_meV"], errors["forces_mae_meV_per_A"])
    for method, errors in json.loads((ROOT / "benchmarks/published/mmea-paper.json").read_text())["rmd17_aspirin"][
        "test"
    ].items()
}

QUICK = {"epochs": 10, "dtype": "float32"}
FULL = {"epochs": 500, "dtype": "float64"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--molecule", default="aspirin", help="any molecule with rmd17_<molecule>_{train,test}_<split>.npz")
    p.add_argument(
        "--ablations",
        action="store_true",
        help="run the MMEA paper's ablations instead of the methods: its MACE recipe (mmea-paper) with one "
        "switch changed per row (MACE models only)",
    )
    p.add_argument("--data-dir", type=Path, default=SHARED_DATA / "rmd17", help="folder with rmd17_*.npz")
    p.add_argument("--split", default="01", help="rMD17 split (01 to 05)")
    p.add_argument("--n-test", type=int, help="evaluate only the first n test configurations")
    add_common_arguments(p)
    return p.parse_args(argv)


def published(molecule: str) -> list[str]:
    """The published MACE-OFF23-medium numbers for this molecule, a paragraph (only aspirin's are on record)."""
    if molecule != "aspirin":
        return []
    numbers = ", ".join(f"{k} {e} / {f}" for k, (e, f) in PAPER_ASPIRIN.items())
    return [f"Published (MACE-OFF23-medium -> aspirin, test E / F MAE): {numbers}.", ""]


def describe(results: list[dict[str, Any]], settings: dict[str, Any], notes: list[str]) -> str:
    """results.md: settings, the side-by-side table, the published numbers and what differs from the papers."""
    return "\n".join(
        [
            f"# rMD17 {settings['molecule']}: {settings['model']}, {settings['mode']} mode",
            "",
            f"{settings['n_train']} training + {settings['n_valid']} validation configurations (seed "
            f"{settings['seed']}) from the train split, test on {settings['n_test']} test-split configurations; "
            f"{settings['epochs']} epochs, {settings['dtype']}, {protocol(settings)}.",
            "",
            *results_table(results),
            "",
            *published(settings["molecule"]),
            "## Differences from the papers",
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    record, epochs, dtype = start(args, QUICK, FULL)
    train = args.data_dir / f"rmd17_{args.molecule}_train_{args.split}.npz"
    test = args.data_dir / f"rmd17_{args.molecule}_test_{args.split}.npz"
    for path in (train, test):
        if not path.is_file():
            available = sorted({f.name.split("_")[1] for f in args.data_dir.glob(f"rmd17_*_train_{args.split}.npz")})
            sys.exit(f"rMD17 file not found: {path} (give --data-dir; molecules there: {', '.join(available)})")
    model_name = Path(args.model).stem if Path(args.model).is_file() else args.model
    mode_name = schedule_name(args.quick, epochs, dtype, QUICK, FULL, args.e0s)
    mode_name += "-ablations" if args.ablations else ""
    mode_name += (f"-split{args.split}" if args.split != "01" else "") + (f"-seed{args.seed}" if args.seed else "")
    folder = args.output or ROOT / "benchmarks" / "results" / "rmd17" / f"{model_name}-{args.molecule}-{mode_name}"
    folder.mkdir(parents=True, exist_ok=True)

    potential = load_potential(args.model, dtype=getattr(torch, dtype), trust_pickle=args.trust_pickle)
    is_mace = potential.family == "mace"
    methods = select_methods(args.methods, args.ablations, is_mace)
    config = engine_options(args, train, test, 100, 0.5, epochs, dtype)
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
    } | optimisation_settings(config)
    notes = [
        f"Split {args.split} of the rMD17 release; the papers average over splits or use split 01.",
        f"{dtype} throughout" + (" (the papers train in float64)." if dtype == "float32" else "."),
    ]
    if not args.quick and epochs != FULL["epochs"]:
        notes.append(f"{epochs} epochs instead of the papers' 500.")
    if args.quick:
        notes.append(f"Quick mode: {epochs} epochs; the numbers show the setup works, they are not converged.")
    if not is_mace:
        notes.append(
            f"{model_name} was pretrained on inorganic crystals (PBE), not organic molecules like MACE-OFF; "
            "this probes the papers' stated limitation. The paper presets name MACE's modules and are run "
            "only for MACE models."
        )
    title = f"rMD17 {args.molecule}, {model_name} ({mode_name})"
    run_comparison(
        with_replay(methods, args),
        potential,
        config,
        folder,
        title,
        lambda results: describe(results, settings, notes),
        {"settings": settings, "notes": notes},
        record,
        md_settings(args),
    )


if __name__ == "__main__":
    from peft_equi_train.cli import configure_logging

    configure_logging()  # the engine's messages (one line per epoch, the model cut) on stderr
    main()
