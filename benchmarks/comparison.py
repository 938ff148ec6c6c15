"""Methods side by side through the fine-tuning engine: shared by rmd17.py and bpa3.py.

Each method fine-tunes a copy of one pretrained model with the same data and settings
(``peft-equi finetune``'s engine); its numbers are kept in ``runs/<method>/method.json`` so an
interrupted comparison continues where it stopped.  The comparison writes ``results.md``,
``results.json`` (numbers, settings, notes and the run record), ``validation_forces.png`` and
``test_errors.png`` after every method.
"""

from __future__ import annotations

import copy
import csv
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from record import add_run_arguments, finished, start_run, write_json

from peft_equi_train.config import FinetuneConfig
from peft_equi_train.engine import Finetuner, TrainingDivergedError

Methods = dict[str, tuple[str, dict[str, Any]]]

#: label -> (adapter or preset, options); applies to every model.
METHODS: Methods = {
    "full": ("full", {}),
    "readout-only": ("readout-only", {}),
    "lora": ("lora", {"rank": 8}),
    "elora": ("elora", {"rank": 8}),
    "mmea": ("mmea", {"rank": 16}),
    "bitfit": ("bitfit", {}),
    "film": ("film", {}),
}
#: The papers' recipes, which name MACE's modules: used when the model is a MACE model.
MACE_PRESETS: Methods = {
    "mmea-paper": ("mmea-paper", {"rank": 16}),
    "mmea-paper r32": ("mmea-paper", {"rank": 32}),
    "elora-paper": ("elora-paper", {"rank": 16}),
    "mace-lora": ("mace-lora", {"rank": 4}),
    "freeze 1": ("freeze", {"level": 1}),  # mace --freeze 1: embedding frozen
    "freeze 5": ("freeze", {"level": 5}),  # mace --freeze 5: products and readouts trained
}
#: The MMEA paper's ablation table: its MACE recipe (``mmea-paper``, reference inits) with one
#: switch changed per row, and readout-only training as the baseline.  MACE models only.
PAPER_RECIPE = ("mmea-paper", {"rank": 16})
ABLATIONS: Methods = {
    "mmea-paper": PAPER_RECIPE,
    "no activation": ("mmea-paper", {"rank": 16, "activation": "identity"}),
    "no input-head reuse": ("mmea-paper", {"rank": 16, "heads": "separate"}),
    "no scalar modulation": ("mmea-paper", {"rank": 16, "scalar_modulation": False}),
    "no higher-order modulation": ("mmea-paper", {"rank": 16, "higher_order_modulation": False}),
    "shared higher-order gains": ("mmea-paper", {"rank": 16, "gain_sharing": "irrep"}),
    "conventional adapter (not equivariant)": ("mmea-paper", {"rank": 16, "linear_adapter": "conventional"}),
    "readout only (baseline)": ("readout-only", {}),
}


def add_common_arguments(parser) -> None:
    """The flags every comparison script takes (model, methods, epochs, precision, threads, seed, output)."""
    parser.add_argument("--quick", action="store_true", help="short smoke-test mode (see the script's docstring)")
    parser.add_argument("--model", default="7net-0", help="7net-0, or a model file (e.g. from pretrain_mace.py)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow a pickled model file (runs its code)")
    parser.add_argument("--methods", nargs="+", help="subset of method labels (default: all that apply)")
    parser.add_argument("--epochs", type=int, help="override the mode's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--e0s",
        default="fit",
        help="per-element energies (the engine's e0s): 'fit' (residuals, on top of the model), 'average' (mace's "
        "--E0s=average as the papers: raw energies, replacing the model's), 'none' or an isolated-atoms file; "
        "results folders of other than 'fit' name it",
    )
    add_run_arguments(parser, dtype=None, dtype_help="override the mode's dtype")
    parser.add_argument(
        "--retain",
        type=Path,
        nargs="+",
        default=[],
        help="structure files from the foundation's domain: forgetting measured against the foundation's own labels",
    )
    parser.add_argument("--retain-every", type=int, default=10, help="evaluate the retain files every n epochs")
    parser.add_argument("--md-structure", type=Path, help="starting structure of the MD stability check (off without)")
    parser.add_argument("--md-steps", type=int, default=1000, help="Langevin NVT steps (0.5 fs) of the MD check")
    parser.add_argument("--md-temperature", type=float, default=500.0, help="MD check temperature (K)")
    parser.add_argument("--md-seeds", type=int, default=3, help="MD check trajectories per method")
    parser.add_argument(
        "--replay",
        type=Path,
        nargs="+",
        default=[],
        help="structure files replayed with the foundation's pseudo-labels, for the --replay-methods",
    )
    parser.add_argument("--replay-methods", nargs="+", default=[], help="methods also run with replay ('+ replay')")
    parser.add_argument("--replay-weight", type=float, default=1.0, help="weight of the replay loss (the engine's)")
    parser.add_argument("--replay-ratio", type=float, default=1.0, help="replay structures per training structure")


def start(args, quick: dict, full: dict) -> tuple[dict, int, str]:
    """The run record (taken now), and the epochs and dtype of the chosen mode after overrides; sets threads."""
    record = start_run(args)
    mode = quick if args.quick else full
    return record, args.epochs or mode["epochs"], args.dtype or mode["dtype"]


def schedule_name(quick: bool, epochs: int, dtype: str, quick_mode: dict, full_mode: dict, e0s: str = "fit") -> str:
    """``quick``, ``full`` (the papers' schedule), or ``e<epochs>-<dtype>`` when ``--epochs``/``--dtype`` change
    the mode's, then ``-e0s-<mode>`` unless ``e0s`` is ``fit``: runs of one molecule on different schedules
    get different results folders."""
    mode = quick_mode if quick else full_mode
    if epochs == mode["epochs"] and dtype == mode["dtype"]:
        name = "quick" if quick else "full"
    else:
        name = ("quick-" if quick else "") + f"e{epochs}-{dtype}"
    return name if e0s == "fit" else f"{name}-e0s-{Path(e0s).stem if Path(e0s).is_file() else e0s}"


def engine_options(args, train: Path, test: Path, n_train: int, valid_fraction: float, epochs: int, dtype: str) -> dict:
    """The :class:`FinetuneConfig` options every method of a comparison shares (``args``: the script's flags)."""
    return {
        "model": args.model,
        "trust_pickle": args.trust_pickle,
        "train": train,
        "test": test,
        "n_train": n_train,
        "valid_fraction": valid_fraction,
        "n_test": getattr(args, "n_test", None),
        "epochs": epochs,
        "dtype": dtype,
        "seed": args.seed,
        "eval_batch_size": 25,
        "progress": False,
        "plots": False,
        "energy_loss": "total",  # the papers' mace --loss=ef
        "e0s": getattr(args, "e0s", "fit"),
        "retain": list(getattr(args, "retain", [])),
        "retain_every": getattr(args, "retain_every", 10),
    } | stage_two(epochs)


def stage_two(epochs: int) -> dict[str, Any]:
    """The papers' stage two (mace ``--swa --start_swa=400`` of 500 epochs), scaled to ``epochs``.

    Quick modes run it too (8 + 2 of 10 epochs): with energy and force weights 1 : 1000 stage one
    barely constrains energies, and stage two (1000 : 100) is where the papers' runs
    bring them down.
    """
    return {"swa": True, "start_swa": round(0.8 * epochs)} if epochs >= 5 else {}


def optimisation_settings(options: dict) -> dict:
    """The engine's optimisation defaults (the papers' settings) that a results table reports."""
    config = FinetuneConfig(**options)
    keys = ("lr", "batch_size", "ema_decay", "energy_loss", "forces_weight", "energy_weight", "swa", "keep", "e0s")
    stage_two_start = config.stage_two_start()
    return {k: getattr(config, k) for k in keys} | {
        "stage_two_from_epoch": None if stage_two_start is None else stage_two_start + 1
    }


def protocol(settings: dict[str, Any]) -> str:
    """One sentence naming the optimisation settings of a comparison (from :func:`optimisation_settings`)."""
    loss = "total-energy" if settings["energy_loss"] == "total" else "per-atom-energy"
    text = (
        f"lr {settings['lr']}, batch {settings['batch_size']}, EMA {settings['ema_decay']}, {loss} loss with "
        f"weights E {settings['energy_weight']:g} / F {settings['forces_weight']:g}"
    )
    if settings["swa"]:
        text += f", stage two (mace --swa) from epoch {settings['stage_two_from_epoch']}"
    text += f"; e0s {settings['e0s']}" if "e0s" in settings else ""
    return text + f"; the {'best-validation' if settings['keep'] == 'best' else 'last'} model is tested"


def select_methods(selected: list[str] | None, ablations: bool, is_mace: bool) -> Methods:
    """The methods to compare, in table order; unknown labels end the program with the available ones."""
    if ablations and not is_mace:
        sys.exit("the ablations are variants of the MMEA paper's MACE recipe (mmea-paper): give a MACE model")
    available = dict(ABLATIONS) if ablations else METHODS | (MACE_PRESETS if is_mace else {})
    if not selected:
        return available
    unknown = [m for m in selected if m not in available]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; available here: {list(available)}")
    return {m: available[m] for m in selected}


def _read_metrics(path: Path) -> list[dict[str, float]]:
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def with_replay(methods: Methods, args) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """``(label, adapter, options, engine overrides)`` of every run: the methods, then ``<label> + replay`` for each
    of ``--replay-methods`` (the same method with ``--replay`` files, pseudo-labelled by the foundation)."""
    runs = [(label, adapter, options, {}) for label, (adapter, options) in methods.items()]
    replay = getattr(args, "replay", [])
    chosen = getattr(args, "replay_methods", [])
    if chosen and not replay:
        sys.exit("--replay-methods needs --replay files")
    unknown = [m for m in chosen if m not in methods]
    if unknown:
        sys.exit(f"--replay-methods {unknown} are not among the methods run: {list(methods)}")
    overrides = {
        "replay": [str(p) for p in replay],
        "replay_labels": "foundation",
        "replay_weight": getattr(args, "replay_weight", 100.0),
        "replay_ratio": getattr(args, "replay_ratio", 1.0),
    }
    return runs + [(f"{m} + replay", *methods[m], overrides) for m in chosen]


def md_settings(args) -> dict[str, Any] | None:
    """The MD stability check of a comparison (``--md-structure`` ...), or ``None`` when off."""
    if args.md_structure is None:
        return None
    return {"structure": str(args.md_structure), "temperature_K": args.md_temperature, "nvt_steps": args.md_steps,
            "nve_steps": args.md_steps, "seeds": args.md_seeds}  # fmt: skip


def md_check(potential, model, md: dict[str, Any]) -> dict[str, Any]:
    """``md_`` numbers of a trained model (:func:`peft_equi_train.md.md_stability` of ``md["structure"]``), per seed."""
    from ase.io import read

    from peft_equi_train.md import PotentialCalculator, md_stability

    atoms = read(md["structure"], index=0)
    runs = [
        md_stability(PotentialCalculator(potential, model), atoms, md["temperature_K"], md["nvt_steps"],
                     md["nve_steps"], seed=seed).summary()
        for seed in range(md["seeds"])
    ]  # fmt: skip
    drifts = [r["nve_drift_eV_per_atom_per_ps"] for r in runs if r["nve_drift_eV_per_atom_per_ps"] is not None]
    return {
        "md_settings": md,
        "md_intact": sum(r["intact"] for r in runs),
        "md_runs": len(runs),
        "md_stable_ps_mean": sum(r["stable_ps"] for r in runs) / len(runs),
        "md_nve_drift_meV_per_atom_per_ps_mean": 1000 * sum(drifts) / len(drifts) if drifts else None,
        "md_max_force_eV_A": max(r["max_force_eV_A"] for r in runs),
        "md_seeds": runs,
    }


def run_method(
    label: str, adapter: str, options: dict, potential, config: dict, folder: Path, md: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fine-tune a copy of ``potential`` with one method (or reuse its finished run, or continue an interrupted
    one); its numbers.

    A run whose loss becomes non-finite is recorded as ``diverged`` (with the engine's
    message) and the comparison goes on.  With ``md`` (:func:`md_settings`), the trained
    model also runs the MD stability check (``md_`` fields).
    """
    done = folder / "method.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.perf_counter()
    # a folder without method.json holds an interrupted run: continue it from its last checkpoint (the engine
    # refuses when anything that changes training differs, the model and data files by content), or start it again
    resume = (folder / "checkpoint.pt").is_file()
    finetuner = Finetuner(
        FinetuneConfig(
            adapter=adapter, adapter_options=options, output=folder, resume=resume, overwrite=not resume, **config
        ),
        potential=copy.deepcopy(potential),
    )
    try:
        result = finetuner.run()
    except TrainingDivergedError as exc:
        numbers = {"label": label, "adapter": adapter, "options": options, "diverged": str(exc)}
        # the engine adapted its copy of the model in place: count what it trained
        trainable = sum(p.numel() for p in finetuner.potential.model.parameters() if p.requires_grad)
        numbers["trainable_parameters"] = trainable
        numbers["wall_time_s"] = time.perf_counter() - started
        write_json(done, numbers)
        return numbers
    rows = _read_metrics(folder / "metrics.csv")
    numbers = {
        "label": label,
        "adapter": adapter,
        "options": options,
        "trainable_parameters": result["trainable_parameters"],
        "base_parameters": base_parameters(finetuner.model),
        "before": {split: e.summary() for split, e in result["before"].items()},
        "after": {split: e.summary() for split, e in result["after"].items()},
        "mergeable": result.get("merged_model") is not None,
        "kept_epoch": result["kept"]["epoch"],
        # with stage two, its best model (kept) and stage one's best model are both tested, as mace's run_train does
        "stage_one_best": {split: e.summary() for split, e in result.get("stage_one_best", {}).items()},
        "stage_one_best_epoch": result["kept"].get("stage_one_best_epoch"),
        "epoch_time_s": sorted(r["time_s"] for r in rows)[len(rows) // 2],
        "wall_time_s": time.perf_counter() - started,
        "curve": [{k: r[k] for k in CURVE_KEYS} for r in rows],
    }
    if md is not None:
        numbers |= md_check(finetuner.potential, finetuner.model, md)
    write_json(done, numbers)
    return numbers


#: Per-epoch numbers a method's record keeps from ``metrics.csv``.
CURVE_KEYS = ("epoch", "stage", "lr", "train_loss", "valid_loss", "valid_forces_mae_meV_per_A")
#: The convergence target: this factor times the lowest validation force MAE any method reached.
TARGET_FACTOR = 1.25


def base_parameters(model) -> int:
    """Parameters of the model the adapters were put on (after ``subset_elements``), adapters excluded."""
    adapters = sum(p.numel() for _, adapter in model.adapters() for p in adapter.parameters())
    return sum(p.numel() for p in model.parameters()) - adapters


def epochs_to_reach(curve: list[dict[str, float]], target: float) -> int | None:
    """First epoch whose validation force MAE (meV/A) is at most ``target``.

    Forces, not the loss: with stage two the loss changes its weights mid-run, so losses of the
    two stages are not on one scale.
    """
    return next((int(r["epoch"]) for r in curve if r["valid_forces_mae_meV_per_A"] <= target), None)


def results_table(results: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per method, test errors after and before, cost and convergence."""
    finished_runs = [r for r in results if "diverged" not in r]
    best = min((c["valid_forces_mae_meV_per_A"] for r in finished_runs for c in r["curve"]), default=float("nan"))
    target = TARGET_FACTOR * best
    checks = _check_columns(finished_runs)
    lines = [
        "| method | trainable | % of model | test E MAE (meV) | test F MAE (meV/A) | before: E / F | "
        f"epochs to valid F MAE <= {target:.3g} | kept epoch | s/epoch | mergeable |"
        + "".join(f" {title} |" for title, _ in checks),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(checks),
    ]
    for r in results:
        if "diverged" in r:
            trainable = f" {r['trainable_parameters']:,} " if "trainable_parameters" in r else " "
            lines.append(f"| {r['label']} |{trainable}| | diverged | | | | | | |")
            continue
        after, before = r["after"]["test"], r["before"]["test"]
        reached = epochs_to_reach(r["curve"], target)
        lines.append(
            f"| {r['label']} | {r['trainable_parameters']:,} | "
            f"{100 * r['trainable_parameters'] / r['base_parameters']:.1f} | {after['energy_mae_meV']:.1f} | "
            f"{after['forces_mae_meV_per_A']:.1f} | {before['energy_mae_meV']:.1f} / "
            f"{before['forces_mae_meV_per_A']:.1f} | {reached if reached is not None else 'not reached'} | "
            f"{r.get('kept_epoch', 'last')} | {r['epoch_time_s']:.1f} | {'yes' if r['mergeable'] else 'no'} |"
            + "".join(f" {cell(r)} |" for _, cell in checks)
        )
    diverged = [f"- {r['label']}: {r['diverged'].split(': stopping')[0]}." for r in results if "diverged" in r]
    return [
        *lines,
        "",
        *([*diverged, ""] if diverged else []),
        "'before' is the pretrained model with the per-element energy shifts fitted on the training "
        "structures, before any training. The convergence target is "
        f"{TARGET_FACTOR} times the lowest validation force MAE any method reached in this run ({best:.3g} meV/A); "
        "the kept epoch is the one with the lowest validation loss of the last stage (the model tested); "
        "s/epoch is the median wall time of an epoch (training + validation).",
    ]


def md_cell(r: dict[str, Any]) -> str:
    """The MD stability numbers of one run (:func:`md_check`'s fields) as one table cell."""
    if "md_runs" not in r:
        return ""
    drift = r["md_nve_drift_meV_per_atom_per_ps_mean"]
    drift_text = f"{drift:.2f}" if drift is not None else "-"
    return f"{r['md_intact']}/{r['md_runs']} intact, {r['md_stable_ps_mean']:.2f} ps, drift {drift_text}"


def foundation_md(potential, folder: Path, md: dict[str, Any]) -> dict[str, Any]:
    """:func:`md_check` of the foundation itself (the 'before' of the MD columns), kept in
    ``runs/foundation-md.json`` and reused while the settings are the same."""
    path = folder / "runs" / "foundation-md.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept["md_settings"] == md:
            return kept
    numbers = md_check(potential, potential.model, md)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, numbers)
    return numbers


def _with_foundation_md(describe: Callable[[list[dict[str, Any]]], str], before: dict[str, Any]):
    """``describe`` followed by a line on the foundation's own MD check (``before``)."""
    return lambda results: describe(results) + f"\nMD of the foundation before fine-tuning: {md_cell(before)}.\n"


def _check_columns(results: list[dict[str, Any]]) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """Extra columns when the runs measured them: retention (F MAE against the foundation's labels, after)
    and MD stability (intact trajectories, mean stable time, NVE drift)."""
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = []
    retained = sorted({s for r in results for s in r["after"] if s.startswith("retain_")})
    for split in retained:
        name = split.removeprefix("retain_")
        columns.append(
            (
                f"{name}: F MAE vs foundation (meV/A)",
                lambda r, s=split: f"{r['after'][s]['forces_mae_meV_per_A']:.1f}" if s in r["after"] else "",
            )
        )
    if any("md_runs" in r for r in results):
        columns.append(("MD: intact, stable ps, NVE drift (meV/atom/ps)", md_cell))
    return columns  # fmt: skip


def plot(results: list[dict[str, Any]], folder: Path, title: str) -> None:
    """Validation force MAE against epoch per method (stage two shaded), and test errors per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if "diverged" not in r]
    if not results:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, r in enumerate(results):
        curve, style = r["curve"], ("-", "--", ":")[i // 10 % 3]  # the colour cycle has 10 colours
        forces = [c["valid_forces_mae_meV_per_A"] for c in curve]
        ax.semilogy([c["epoch"] for c in curve], forces, style, label=r["label"])
    stage_two = [c["epoch"] for c in results[0]["curve"] if c["stage"] == 2]
    if stage_two:
        ax.axvspan(min(stage_two) - 0.5, max(stage_two) + 0.5, color="0.9", label="stage two")
    ax.set(xlabel="epoch", ylabel="validation force MAE (meV/A, EMA weights)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "validation_forces.png", dpi=120)
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


def run_comparison(
    methods: Methods,
    potential,
    config: dict[str, Any],
    folder: Path,
    title: str,
    describe: Callable[[list[dict[str, Any]]], str],
    extra: dict[str, Any],
    record: dict[str, Any],
    md: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every method in turn, rewriting results.md (``describe(results)``), results.json and plots after each.

    ``methods``: a label -> (adapter, options) table, or :func:`with_replay`'s runs (with engine
    overrides).  ``md``: the MD stability check of every trained model (:func:`md_settings`), or ``None``."""
    runs = methods if isinstance(methods, list) else [(k, a, o, {}) for k, (a, o) in methods.items()]
    if md is not None:
        before = foundation_md(potential, folder, md)
        extra = extra | {"foundation_md": before}
        describe = _with_foundation_md(describe, before)
    results = []
    for label, adapter, options, overrides in runs:
        print(f"[{label}] {adapter} {options}", flush=True)
        slug = re.sub(r"[^a-z0-9-]+", "_", label.lower()).strip("_")
        results.append(run_method(label, adapter, options, potential, config | overrides, folder / "runs" / slug, md))
        if "diverged" in results[-1]:
            print(f"[{label}] diverged: {results[-1]['diverged']}")
        else:
            after = results[-1]["after"]["test"]
            print(f"[{label}] test E {after['energy_mae_meV']:.1f} meV, F {after['forces_mae_meV_per_A']:.1f} meV/A")
        (folder / "results.md").write_text(describe(results))
        plot(results, folder, title)
        write_json(folder / "results.json", extra | {"methods": results, "record": finished(record)})
    print((folder / "results.md").read_text())
    return results
