"""The E0 experiment (``e0_protocol.sh``) in one place: both per-element energy modes side by side.

Usage::

    python benchmarks/e0_summary.py          # reads and writes benchmarks/results/e0-protocol/

Reads the ``results.json`` of every comparison folder ``<molecule>-<schedule>-<e0s>[-seedN|-ablations]``
that exists and writes, in the same folder:

* ``summary.json``: a list of rows ``{"molecule", "e0s", "schedule", "method", "test_energy_mae_meV",
  "test_forces_mae_meV_per_A"}`` (seed 0; ``schedule`` is ``e50-float32`` or ``full``, the papers' 500
  epochs; ``dtype``, the stage-one-best test errors, the kept epoch and the source folder come along),
  and ``summary-seeds.json``, the other seeds' rows;
* ``summary.md``: per schedule and molecule, each method's test errors under ``fit`` and ``average`` and
  the best parameter-efficient method against full fine-tuning in each mode; the ablation; the
  float32/float64 comparison on ethanol; the published numbers beside aspirin;
* ``curves-<schedule>.png``: validation force MAE per epoch, ``fit`` solid and ``average`` dashed.

It only tabulates: every number comes from a results.json with its run record.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

from record import ROOT, write_json
from rmd17 import PAPER_ASPIRIN

FOLDER = ROOT / "benchmarks" / "results" / "e0-protocol"
MOLECULES = ("ethanol", "aspirin", "malonaldehyde", "toluene", "salicylic")
METHODS = ("full", "mace-lora", "elora-paper", "mmea-paper")
MODES = ("fit", "average")
#: the parameter-efficient methods each schedule runs (e0_protocol.sh: breadth and depth)
PEFT_METHODS = {"e50-float32": ("mace-lora", "elora-paper", "mmea-paper"), "full": ("elora-paper", "mmea-paper")}
NAME = re.compile(r"^(?P<molecule>[a-z]+)-(?P<schedule>e50|full)-(?P<dtype>float32|float64)-(?P<e0s>fit|average)"
                  r"(?:-seed(?P<seed>\d+))?(?P<ablations>-ablations)?$")  # fmt: skip
#: ethanol's core methods on the papers' schedule in float64 with e0s 'fit' (issue 12's queue, earlier code:
#: the paper presets then trained the Bessel weights; full fine-tuning is unchanged): the float64 reference
FLOAT64_ETHANOL = ROOT / "benchmarks" / "results" / "rmd17" / "mace-organic-xtb-ethanol-full"


def read_runs(folder: Path) -> list[dict[str, Any]]:
    """One row per finished method of every comparison folder in ``folder``."""
    rows = []
    for path in sorted(folder.glob("*/results.json")):
        match = NAME.match(path.parent.name)
        if match is None:
            continue
        data = json.loads(path.read_text())
        for method in data["methods"]:
            if "after" not in method and "diverged" not in method:
                continue
            rows.append(row(match, method, path.parent, data))
    return rows


def row(match: re.Match, method: dict[str, Any], folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The summary row of one method of one comparison."""
    name = match.groupdict()
    ablation = name["ablations"] and method["label"] != "mmea-paper"
    label = f"mmea-paper, {method['label']}" if ablation else method["label"]
    out = {
        "molecule": name["molecule"],
        "e0s": name["e0s"],
        "schedule": "e50-float32" if name["schedule"] == "e50" else "full",
        "method": label,
        "test_energy_mae_meV": None,
        "test_forces_mae_meV_per_A": None,
        "dtype": name["dtype"],
        "seed": int(name["seed"] or 0),
        "source": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder),
    }
    if "diverged" in method:
        return out | {"diverged": method["diverged"]}
    test, stage_one = method["after"]["test"], method.get("stage_one_best", {}).get("test")
    return out | {
        "test_energy_mae_meV": test["energy_mae_meV"],
        "test_forces_mae_meV_per_A": test["forces_mae_meV_per_A"],
        "kept_epoch": method["kept_epoch"],
        "stage_one_best_epoch": method.get("stage_one_best_epoch"),
        "stage_one_best_test_energy_mae_meV": stage_one["energy_mae_meV"] if stage_one else None,
        "stage_one_best_test_forces_mae_meV_per_A": stage_one["forces_mae_meV_per_A"] if stage_one else None,
        "trainable_parameters": method["trainable_parameters"],
        "before_test_energy_mae_meV": method["before"]["test"]["energy_mae_meV"],
        "curve": [[c["epoch"], c["valid_forces_mae_meV_per_A"]] for c in method["curve"]],
    }


def cell(found: dict[str, Any] | None, stage_one: bool = False) -> str:
    """'E / F' of a row (or its stage-one-best model)."""
    if found is None:
        return "not run"
    if "diverged" in found:
        return "diverged"
    prefix = "stage_one_best_" if stage_one else ""
    energy, force = found[f"{prefix}test_energy_mae_meV"], found[f"{prefix}test_forces_mae_meV_per_A"]
    return "-" if energy is None else f"{energy:.1f} / {force:.1f}"


def best_peft(rows: dict[str, dict[str, Any]], expected: int) -> str:
    """The parameter-efficient method with the lowest test force error, and its change against full (with how
    many of the ``expected`` parameter-efficient methods have finished, while not all have)."""
    finished = {m: r for m, r in rows.items() if r.get("test_forces_mae_meV_per_A") is not None}
    peft = {m: r["test_forces_mae_meV_per_A"] for m, r in finished.items() if m != "full"}
    if not peft or "full" not in finished:
        return ""
    best = min(peft, key=peft.get)
    partial = f" ({len(peft)} of {expected} run so far)" if len(peft) < expected else ""
    return f"{best} {100 * (peft[best] / finished['full']['test_forces_mae_meV_per_A'] - 1):+.0f} %{partial}"


def schedule_table(rows: list[dict[str, Any]], schedule: str) -> list[str]:
    """Per molecule and method: test E / F under fit and average, the E0 effect, best PEFT vs full per mode."""
    chosen = [r for r in rows if r["schedule"] == schedule and r["seed"] == 0 and r["method"] in METHODS]
    if not chosen:
        return []
    index = {(r["molecule"], r["e0s"], r["method"]): r for r in chosen}
    stage_one = schedule == "full"
    lines = [
        "| molecule | method | fit: E / F | average: E / F | F, average vs fit |"
        + (" stage one's best, fit | stage one's best, average |" if stage_one else ""),
        "|---|---|---:|---:|---:|" + ("---:|---:|" if stage_one else ""),
    ]
    verdicts = []
    for molecule in MOLECULES:
        methods = [m for m in METHODS if any((molecule, e, m) in index for e in MODES)]
        for method in methods:
            fit, average = index.get((molecule, "fit", method)), index.get((molecule, "average", method))
            change = ""
            if fit and average and fit.get("test_forces_mae_meV_per_A") and average.get("test_forces_mae_meV_per_A"):
                change = f"{100 * (average['test_forces_mae_meV_per_A'] / fit['test_forces_mae_meV_per_A'] - 1):+.0f} %"
            lines.append(
                f"| {molecule} | {method} | {cell(fit)} | {cell(average)} | {change} |"
                + (f" {cell(fit, True)} | {cell(average, True)} |" if stage_one else "")
            )
        if methods:
            by_mode = {e: {m: index[(molecule, e, m)] for m in METHODS if (molecule, e, m) in index} for e in MODES}
            expected = len(PEFT_METHODS[schedule])
            verdicts.append(
                f"| {molecule} | {best_peft(by_mode['fit'], expected)} | {best_peft(by_mode['average'], expected)} |"
            )
    return [
        *lines,
        "",
        "Best parameter-efficient method (test force MAE) against full fine-tuning, per mode:",
        "",
        "| molecule | fit | average |",
        "|---|---|---|",
        *verdicts,
    ]


def ablation_table(rows: list[dict[str, Any]]) -> list[str]:
    """Aspirin, 50 epochs: mmea-paper and its 'no scalar modulation' ablation under both modes."""
    labels = ("mmea-paper", "mmea-paper, no scalar modulation")
    index = {(r["e0s"], r["method"]): r for r in rows if r["molecule"] == "aspirin" and r["schedule"] == "e50-float32"}
    if not any((e, labels[1]) in index for e in MODES):
        return []
    lines = ["| method | fit: E / F | average: E / F |", "|---|---:|---:|"]
    for label in labels:
        lines.append(f"| {label} | {cell(index.get(('fit', label)))} | {cell(index.get(('average', label)))} |")
    return [*lines, "", "Published (MACE-OFF23-medium, 500 epochs, float64, `average`): the recipe 7.3 / 16.4, "
            "no scalar modulation 12.9 / 30.5."]  # fmt: skip


def precision_table(rows: list[dict[str, Any]], seeds: list[dict[str, Any]]) -> list[str]:
    """Ethanol on the papers' schedule with e0s fit: float32 (seeds) against the float64 run of issue 12."""
    float32 = [r for r in rows + seeds if r["molecule"] == "ethanol" and r["schedule"] == "full"
               and r["e0s"] == "fit" and r["dtype"] == "float32" and r.get("test_forces_mae_meV_per_A")]  # fmt: skip
    reference = FLOAT64_ETHANOL / "results.json"
    if not float32 or not reference.is_file():
        return []
    float64 = {m["label"]: m for m in json.loads(reference.read_text())["methods"] if "after" in m}
    lines = ["| method | float32, seed: test E / F | float64 (seed 0, earlier run): test E / F |", "|---|---|---:|"]
    for method in ("full", "elora-paper", "mmea-paper"):
        ours = sorted((r for r in float32 if r["method"] == method), key=lambda r: r["seed"])
        if not ours:
            continue
        cells = ", ".join(f"seed {r['seed']}: {cell(r)}" for r in ours)
        if len(ours) > 1:
            values = [r["test_forces_mae_meV_per_A"] for r in ours]
            cells += f" (F {statistics.mean(values):.1f} +- {statistics.stdev(values):.1f})"
        reference_row = float64.get(method)
        theirs = (
            "-"
            if reference_row is None
            else "{:.1f} / {:.1f}".format(
                reference_row["after"]["test"]["energy_mae_meV"], reference_row["after"]["test"]["forces_mae_meV_per_A"]
            )
        )
        lines.append(f"| {method} | {cells} | {theirs} |")
    return [*lines, "", f"float64 runs: `{FLOAT64_ETHANOL.relative_to(ROOT)}` (the paper presets there also trained "
            "MACE's Bessel weights; `full` is the same method)."]  # fmt: skip


def plot_curves(rows: list[dict[str, Any]], folder: Path, schedule: str) -> str | None:
    """Validation force MAE per epoch, one panel per molecule: fit solid, average dashed; the file name."""
    chosen = [
        r for r in rows if r["schedule"] == schedule and r["seed"] == 0 and r["method"] in METHODS and "curve" in r
    ]
    molecules = [m for m in MOLECULES if any(r["molecule"] == m for r in chosen)]
    if not molecules:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(molecules), figsize=(4.2 * len(molecules), 3.8), squeeze=False)
    colours = dict(zip(METHODS, ("C0", "C1", "C2", "C3")))
    for ax, molecule in zip(axes[0], molecules):
        for r in (r for r in chosen if r["molecule"] == molecule):
            epochs, forces = zip(*r["curve"])
            style = "-" if r["e0s"] == "fit" else "--"
            ax.semilogy(epochs, forces, style, color=colours[r["method"]], label=f"{r['method']} ({r['e0s']})", lw=1)
        ax.set(title=molecule, xlabel="epoch", ylabel="validation force MAE (meV/A)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{schedule}: e0s fit (solid) and average (dashed)")
    fig.tight_layout()
    name = f"curves-{schedule}.png"
    fig.savefig(folder / name, dpi=110)
    plt.close(fig)
    return name


def summary_markdown(rows: list[dict[str, Any]], seeds: list[dict[str, Any]], plots: dict[str, str | None]) -> str:
    published = ", ".join(f"{k} {e} / {f}" for k, (e, f) in PAPER_ASPIRIN.items())
    lines = [
        "# The E0 protocol: rMD17 from mace-organic-xtb with e0s `fit` and `average`",
        "",
        "`fit`: per-element corrections fitted on the residuals after the foundation's prediction and added on top "
        "(the engine's default; mace's `--E0s=estimated`). `average`: mace's `--E0s=average`, which the MMEA and "
        "ELoRA reference code uses: least squares of the raw training energies, replacing the foundation's atomic "
        "energies, so that every run starts off by the foundation's interaction energy. 50 + 50 structures of "
        "split 01 (seed 0), 1000 test structures, the papers' optimisation; test E / F MAE in meV and meV/A. "
        "Made by `bash benchmarks/e0_protocol.sh` (each folder's results.json holds its run record).",
        "",
    ]
    for schedule, title in (("e50-float32", "50 epochs"), ("full", "the papers' schedule: 500 epochs, "
                            "stage two from 400")):  # fmt: skip
        table = schedule_table(rows, schedule)
        if table:
            dtypes = sorted({r["dtype"] for r in rows if r["schedule"] == schedule})
            lines += [f"## {title} ({', '.join(dtypes)})", "", *table, ""]
            if plots.get(schedule):
                lines += [f"![validation curves]({plots[schedule]})", ""]
    lines += [f"Published (MACE-OFF23-medium -> aspirin, 500 epochs, float64, `average`): {published}.", ""]
    ablation = ablation_table(rows)
    if ablation:
        lines += ["## MMEA ablation: no scalar modulation (aspirin, 50 epochs, float32)", "", *ablation, ""]
    precision = precision_table(rows, seeds)
    if precision:
        lines += ["## float32 against float64 (ethanol, 500 epochs, e0s fit)", "", *precision, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=FOLDER)
    args = p.parse_args(argv)
    runs = read_runs(args.folder)
    rows = [r for r in runs if r["seed"] == 0]
    seeds = [r for r in runs if r["seed"] != 0]
    plots = {schedule: plot_curves(rows, args.folder, schedule) for schedule in ("e50-float32", "full")}
    strip = lambda r: {k: v for k, v in r.items() if k != "curve"}  # noqa: E731
    write_json(args.folder / "summary.json", [strip(r) for r in rows])
    write_json(args.folder / "summary-seeds.json", [strip(r) for r in seeds])
    (args.folder / "summary.md").write_text(summary_markdown(rows, seeds, plots))
    print((args.folder / "summary.md").read_text())


if __name__ == "__main__":
    main()
