"""The papers' transfer experiment from mace-organic-xtb, summarised from the comparisons' results.

Usage::

    python benchmarks/organic_summary.py                 # the 50-epoch float32 comparisons
    python benchmarks/organic_summary.py --mode full \
        --bpa-mode e50-float64                           # SCHEDULE=papers: 500 epochs, float64

organic_comparisons.sh's ``collect`` runs it for its schedule.

Reads the ``results.json`` of every comparison that exists (rMD17 molecules, aspirin seeds and
ablations, the schedule references, 3BPA) and writes ``mace-organic-xtb-<mode>-summary.{md,json}``
under ``benchmarks/results/``: per molecule the test errors of the core methods and how the best
parameter-efficient method compares with full fine-tuning; aspirin with every method, retention
(forgetting) and MD stability; seeds as mean and spread; the ablations; what the shorter schedule
costs; 3BPA.  It only tabulates: every number comes from a results.json with its run record.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from comparison import md_cell
from record import ROOT, write_json
from rmd17 import PAPER_ASPIRIN

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "mace-organic-xtb"
CORE = ("full", "mace-lora", "elora-paper", "mmea-paper")
MOLECULES = ("aspirin", "ethanol", "malonaldehyde", "toluene", "salicylic")
RETAIN = "retain_test-100"


def load(folder: Path) -> dict[str, Any] | None:
    """A comparison's results.json (``None`` when it has not run), its methods keyed by label."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["by_label"] = {m["label"]: m for m in data["methods"] if "after" in m}
    data["source"] = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return data


def forces(method: dict[str, Any] | None) -> float | None:
    """Test force MAE (meV/A) of a finished method."""
    return None if method is None else method["after"]["test"]["forces_mae_meV_per_A"]


def errors(method: dict[str, Any] | None) -> str:
    """'E / F' test MAE cell."""
    if method is None or "diverged" in method:
        return "not run" if method is None else "diverged"
    test = method["after"]["test"]
    return f"{test['energy_mae_meV']:.1f} / {test['forces_mae_meV_per_A']:.1f}"


def molecule_rows(results: Path, mode: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Core methods per molecule and full vs the best parameter-efficient method."""
    lines = [
        "| molecule | " + " | ".join(CORE) + " | best PEFT | its F vs full |",
        "|---|" + "---:|" * len(CORE) + "---|---:|",
    ]
    rows = []
    for molecule in MOLECULES:
        data = load(results / "rmd17" / f"{MODEL}-{molecule}-{mode}")
        if data is None:
            continue
        methods = data["by_label"]
        peft = {label: forces(methods.get(label)) for label in CORE[1:] if label in methods}
        best = min(peft, key=peft.get) if peft else None
        full = forces(methods.get("full"))
        change = f"{100 * (peft[best] / full - 1):+.0f} %" if best and full else ""
        lines.append(f"| {molecule} | " + " | ".join(errors(methods.get(m)) for m in CORE) + f" | {best} | {change} |")
        rows.append({"molecule": molecule, "source": data["source"], "full_forces": full, "best_peft": best,
                     "best_peft_forces": peft.get(best) if best else None})  # fmt: skip
    return lines, rows


def spread(values: list[float]) -> str:
    """'mean +- sample standard deviation (n)'."""
    if len(values) < 2:
        return f"{values[0]:.1f} (n=1)" if values else ""
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f} (n={len(values)})"


def aspirin_rows(results: Path, mode: str) -> tuple[list[str], dict[str, Any]]:
    """Aspirin: every method with trainable share, test errors, seeds, retention and MD stability."""
    data = load(results / "rmd17" / f"{MODEL}-aspirin-{mode}")
    if data is None:
        return ["(not run)"], {}
    seeds = [data] + [load(results / "rmd17" / f"{MODEL}-aspirin-{mode}-seed{s}") for s in (1, 2)]
    lines = [
        "| method | trainable (% of model) | test E / F MAE | F over seeds | retention: F MAE vs foundation | MD at "
        "500 K: intact, stable ps, NVE drift (meV/atom/ps) | published E / F |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    methods = data["by_label"]
    some = next(iter(methods.values()), None)
    if some is not None and "foundation_md" in data:
        retained = some["before"].get(RETAIN, {}).get("forces_mae_meV_per_A")
        lines.append(f"| foundation (no fine-tuning) | 0 | {some['before']['test']['energy_mae_meV']:.1f} / "
                     f"{some['before']['test']['forces_mae_meV_per_A']:.1f} | | {retained:.1f} | "
                     f"{md_cell(data['foundation_md'])} | |")  # fmt: skip
    summary = {}
    for label, m in methods.items():
        over_seeds = [forces(s["by_label"][label]) for s in seeds if s and label in s["by_label"]]
        retained = m["after"].get(RETAIN, {}).get("forces_mae_meV_per_A")
        paper = PAPER_ASPIRIN.get(label.removesuffix("-paper"))
        lines.append(
            f"| {label} | {m['trainable_parameters']:,} ({100 * m['trainable_parameters'] / m['base_parameters']:.1f}) "
            f"| {errors(m)} | {spread(over_seeds) if len(over_seeds) > 1 else ''} | "
            f"{'' if retained is None else f'{retained:.1f}'} | {md_cell(m)} | "
            f"{f'{paper[0]} / {paper[1]}' if paper else ''} |"
        )
        summary[label] = {"forces": forces(m), "forces_over_seeds": over_seeds, "retain_forces": retained,
                          "md_intact": m.get("md_intact"), "md_runs": m.get("md_runs")}  # fmt: skip
    return lines, {"source": data["source"], "methods": summary}


def ablation_rows(results: Path, mode: str) -> list[str]:
    """The MMEA ablations on aspirin: test errors and the force change against the full recipe."""
    data = load(results / "rmd17" / f"{MODEL}-aspirin-{mode}-ablations")
    if data is None:
        return ["(not run)"]
    reference = forces(data["by_label"].get("mmea-paper"))
    lines = ["| variant | test E / F MAE | F vs mmea-paper |", "|---|---:|---:|"]
    for label, m in data["by_label"].items():
        change = f"{100 * (forces(m) / reference - 1):+.1f} %" if reference else ""
        lines.append(f"| {label} | {errors(m)} | {change} |")
    return lines


def stage_one_best(method: dict[str, Any] | None) -> str:
    """Lowest validation force MAE of stage one (meV/A; the EMA weights), a cell."""
    if method is None or "diverged" in method:
        return "not run" if method is None else "diverged"
    return f"{min(c['valid_forces_mae_meV_per_A'] for c in method['curve'] if c['stage'] == 1):.1f}"


def schedule_rows(results: Path, molecule: str, modes: tuple[str, ...]) -> list[str]:
    """One molecule's core methods on several schedules: what a shorter schedule costs (test errors, and
    the best validation force error of stage one, which the stage-two fix of 2026-12-03 does not touch)."""
    runs = {mode: load(results / "rmd17" / f"{MODEL}-{molecule}-{mode}") for mode in dict.fromkeys(modes)}
    lines = [
        "| method | " + " | ".join(f"{mode}: test E / F | {mode}: stage one, best valid F" for mode in runs) + " |",
        "|---|" + "---:|---:|" * len(runs),
    ]
    for label in CORE:
        cells = [
            f"{errors(run['by_label'].get(label))} | {stage_one_best(run['by_label'].get(label))}"
            if run
            else "not run | not run"
            for run in runs.values()
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def bpa_rows(results: Path, mode: str) -> list[str]:
    """3BPA: trained at 300 K, tested on hotter configurations."""
    data = load(results / "3bpa" / f"{MODEL}-{mode}")
    if data is None:
        return ["(not run)"]
    lines = ["| method | trainable | test (hot) E / F MAE |", "|---|---:|---:|"]
    lines += [f"| {label} | {m['trainable_parameters']:,} | {errors(m)} |" for label, m in data["by_label"].items()]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="e50-float32", help="the comparisons' schedule (results folder suffix)")
    p.add_argument("--bpa-mode", default="e5-float32", help="3BPA's schedule (results folder suffix)")
    p.add_argument("--results", type=Path, default=RESULTS, help="the benchmarks' results folder")
    p.add_argument("--out", type=Path, help="default: <results>/mace-organic-xtb-<mode>-summary.md")
    args = p.parse_args(argv)
    args.out = args.out or args.results / f"{MODEL}-{args.mode}-summary.md"
    molecules, molecule_summary = molecule_rows(args.results, args.mode)
    aspirin, aspirin_summary = aspirin_rows(args.results, args.mode)
    text = [
        f"# {MODEL} -> rMD17 and 3BPA: the papers' transfer experiment ({args.mode})",
        "",
        "Made by `python benchmarks/organic_summary.py` from the results.json files (each with its run "
        f"record) of `rmd17/{MODEL}-<molecule>-{args.mode}[-seed<n>|-ablations]/` and "
        f"`3bpa/{MODEL}-{args.bpa_mode}/`. Test errors: energy MAE per "
        "configuration (meV) / force-component MAE (meV/A), 1000 test configurations, 50 training structures.",
        "",
        "## Core methods per molecule",
        "",
        *molecules,
        "",
        "## Aspirin: every method, forgetting and MD stability",
        "",
        *aspirin,
        "",
        "Retention: force MAE against the foundation's own labels on 100 held-out pretraining molecules (xTB); "
        "it also measures the move from xTB to DFT, which fine-tuning is meant to make. Published: MACE-OFF23-"
        "medium, 500 epochs, float64 (MMEA paper).",
        "",
        "## MMEA ablations (aspirin)",
        "",
        *ablation_rows(args.results, args.mode),
        "",
        "## What the shorter schedule costs (ethanol)",
        "",
        "`full` is the papers' schedule (500 epochs, float64); the others name epochs and precision. The "
        "e150 runs of ethanol were made before stage two was fixed (it weighed the total energy by 1000 "
        "instead of mace's per-atom energy, docs/finetuning.md), so only their stage-one column compares "
        "schedules cleanly.",
        "",
        *schedule_rows(args.results, "ethanol", ("e50-float32", "e150-float32", "full")),
        "",
        "## 3BPA (300 K -> hotter configurations)",
        "",
        *bpa_rows(args.results, args.bpa_mode),
        "",
    ]
    args.out.write_text("\n".join(text))
    write_json(args.out.with_suffix(".json"), {"mode": args.mode, "molecules": molecule_summary,
                                               "aspirin": aspirin_summary})  # fmt: skip
    print("\n".join(text))


if __name__ == "__main__":
    main()
