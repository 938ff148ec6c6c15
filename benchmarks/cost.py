"""Cost of each method on a real potential: trainable parameters, step times and optimizer memory, as ratios.

Usage: python benchmarks/cost.py [--model 7net-0 | --architecture mace_off23_medium] [--repeats 5] [--batch 5]

On one batch of rMD17 aspirin structures (``../shared/data``) or, without it, of the bundled
acetamide data, for every method of the rMD17 comparison (on MACE models also the papers'
presets and ``mmea on o3.Linear``, MMEA alone where the MMEA paper puts it):

- **forward + forces** (evaluation) time, relative to the unadapted model;
- on MACE models, the same **compiled with TorchScript** (e3nn's ``jit.compile``, as mace's
  LAMMPS and OpenMM routes compile), relative to the same model run eagerly;
- **training step** (forward, forces with their graph, E/F loss, backward, Adam step) time,
  relative to full fine-tuning of the same model;
- the **merged** model's forward + forces time, where the adapter merges;
- **optimizer state** bytes after one Adam (amsgrad) step, relative to full fine-tuning.

``--fusion off`` compiles with TorchScript's graph specialisation and fusion switched off
(``torch.jit.set_fusion_strategy([("STATIC", 0), ("DYNAMIC", 0)])``, for the whole run);
``--methods`` times a subset (with ``full``, the reference of the training ratios).
``--architecture`` times one of :func:`peft_equi.families.mace.architectures.build_mace`'s
architectures with random weights (H, C, O): cost does not depend on the weights' values.

Times are medians over ``--repeats`` rounds in which every variant runs in turn, so drift of
the (shared) machine hits all alike; only the ratios within one run are meaningful.  Writes
``results.md``, ``results.json`` (with the run record) and ``cost.png`` under
``benchmarks/results/cost/<model>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
from pathlib import Path

import torch
from comparison import MACE_PRESETS, METHODS
from record import ROOT, add_run_arguments, finished, start_run, write_json
from timing import interleaved_samples, round_ratios

import peft_equi
from peft_equi.core.config import PeftConfig, Rule
from peft_equi.families import load_potential
from peft_equi.families.base import Potential
from peft_equi.families.mace.architectures import HCO, build_mace
from peft_equi.families.mace.potential import MacePotential
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi_train.data import read_dataset

ASPIRIN = ROOT.parent / "shared" / "data" / "rmd17" / "rmd17_aspirin_train_01.npz"
ACETAMIDE = ROOT / "examples" / "data" / "acetamide_gfn2xtb_md.extxyz"
CPU = torch.device("cpu")
FUSION_OFF = [("STATIC", 0), ("DYNAMIC", 0)]  # TorchScript compiles without specialising or fusing
#: MMEA alone on every ``o3.Linear`` (the MMEA paper's placement, without the recipe's ELoRA/LoRA parts).
MMEA_ON_LINEAR = PeftConfig(rules=[Rule(adapter="mmea", kinds=["linear"], options={"rank": 16})])


def _potential(args, dtype: torch.dtype) -> tuple[Potential, str]:
    """The model to time and its name for the results folder."""
    if args.architecture:
        with torch_default_dtype(dtype):
            model = build_mace(args.architecture, HCO)
        return MacePotential(model, args.architecture), f"{args.architecture}-architecture"
    potential = load_potential(args.model, dtype=dtype, trust_pickle=args.trust_pickle)
    return potential, Path(args.model).stem if Path(args.model).is_file() else args.model


def _methods(potential: Potential, selected: list[str] | None) -> dict[str, tuple]:
    """``label -> (adapter, preset or config, options)`` of the methods timed on this model (``selected``: a subset)."""
    available = dict(METHODS)
    if potential.family == "mace":
        available |= {"mmea on o3.Linear": (MMEA_ON_LINEAR, {})} | MACE_PRESETS
    unknown = sorted(set(selected or []) - set(available))
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; available here: {list(available)}")
    chosen = ["full", *(label for label in selected if label != "full")] if selected else list(available)
    return {label: available[label] for label in chosen}


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a copy) compiled as mace's deployment routes compile: e3nn's ``jit.compile``."""
    from e3nn.util import jit

    plain = model.base_model if isinstance(model, peft_equi.PeftModel) else model
    return jit.compile(copy.deepcopy(plain))


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim() > 0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default="7net-0", help="a model name or file")
    which.add_argument("--architecture", choices=["mace_off23_medium"], help="a MACE architecture, random weights")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled model file (runs its code)")
    p.add_argument("--methods", nargs="+", help="subset of method labels (default: all that apply)")
    p.add_argument("--fusion", choices=["default", "off"], default="default", help="TorchScript fusion strategy")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=5, help="structures per batch")
    add_run_arguments(p)
    args = p.parse_args(argv)
    # a global setting of torch.jit: put back afterwards (main may run inside another program, e.g. the tests)
    previous = torch.jit.set_fusion_strategy(FUSION_OFF) if args.fusion == "off" else None
    try:
        measure(args)
    finally:
        if previous is not None:
            torch.jit.set_fusion_strategy(previous)


def measure(args: argparse.Namespace) -> None:
    """Time every method and write the results (see the module docstring)."""
    record = start_run(args)
    dtype = getattr(torch, args.dtype)
    potential, model_name = _potential(args, dtype)
    methods = _methods(potential, args.methods)
    data_path = ASPIRIN if ASPIRIN.is_file() else ACETAMIDE
    data = read_dataset(data_path).subset(range(args.batch))
    batch = potential.collate(potential.graphs(data.atoms), CPU, dtype)
    reference_forces = torch.cat([torch.as_tensor(f) for f in data.forces]).to(dtype)
    reference_energy = torch.as_tensor(data.energies, dtype=dtype)

    models, optimizers, counts = {"base": potential.model}, {}, {}
    for label, (adapter, options) in methods.items():
        torch.manual_seed(0)
        model = peft_equi.get_peft_model(copy.deepcopy(potential.model), adapter, **options)
        randomize_adapters(model)
        models[label] = model
        counts[label] = model.num_trainable_parameters()
        params = [q for q in model.parameters() if q.requires_grad]
        optimizers[label] = torch.optim.Adam(params, lr=1e-9, amsgrad=True)
        with contextlib.suppress(peft_equi.NotMergeableError):
            models[f"{label} merged"] = copy.deepcopy(model).merge_and_unload()

    def evaluate(model):
        def run():
            energy, forces = potential.energy_forces(model, batch, training=False)
            return energy.detach(), forces.detach()

        return run

    def train_step(model, optimizer):
        def run():
            optimizer.zero_grad(set_to_none=True)
            energy, forces = potential.energy_forces(model, batch, training=True)
            loss = (energy - reference_energy).square().mean() + 1000 * (forces - reference_forces).square().mean()
            loss.backward()
            optimizer.step()

        return run

    fns = {(key, "forward"): evaluate(model) for key, model in models.items()}
    scripted = potential.family == "mace"
    if scripted:
        fns |= {(key, "scripted"): evaluate(_compiled(models[key])) for key in ["base", *methods]}
    fns |= {(label, "step"): train_step(models[label], optimizers[label]) for label in methods}
    samples = interleaved_samples(fns, args.repeats, warmup=3)
    times = {key: statistics.median(values) for key, values in samples.items()}

    def quartiles(key, reference) -> tuple[float, ...] | None:
        """Quartiles over rounds of ``key`` / ``reference`` (``None``: ``key`` was not timed)."""
        return round_ratios(samples, key, reference) if key in samples else None

    state = {label: _state_bytes(optimizers[label]) for label in methods}

    rows = []
    for label in methods:
        measured = {
            "forward_forces_vs_base": ((label, "forward"), ("base", "forward")),
            "scripted_vs_eager": ((label, "scripted"), (label, "forward")),
            "train_step_vs_full": ((label, "step"), ("full", "step")),
            "merged_forward_forces_vs_base": ((f"{label} merged", "forward"), ("base", "forward")),
        }
        ratios = {name: quartiles(*keys) for name, keys in measured.items()}
        rows.append(
            {"method": label, "trainable_parameters": counts[label]}
            | {name: None if q is None else q[1] for name, q in ratios.items()}
            | {f"{name}_quartiles": q for name, q in ratios.items()}
            | {"optimizer_state_bytes": state[label], "optimizer_state_vs_full": state[label] / state["full"]}
        )
    variant = "-fusion-off" if args.fusion == "off" else ""
    folder = args.output or ROOT / "benchmarks" / "results" / "cost" / f"{model_name}{variant}"
    folder.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Cost per method: {model_name}\n\n"
        f"One batch of {args.batch} structures from `{data_path.name}`, {args.dtype}, "
        f"{torch.get_num_threads()} threads, {args.repeats} interleaved rounds; a ratio is the median over rounds "
        "of the ratio within a round (quartiles in brackets: what is left of the machine's noise). "
        f"Base model: forward + forces {1e3 * times['base', 'forward']:.0f} ms; "
        f"full fine-tuning step {1e3 * times['full', 'step']:.0f} ms."
    )
    if scripted:
        base_ratio = quartiles(("base", "scripted"), ("base", "forward"))[1]
        header += f" Base model compiled with TorchScript (fusion strategy: {args.fusion}) / eager: {base_ratio:.3f}."
    lines = [
        header + "\n",
        "| method | trainable | fwd+forces / base | TorchScript / eager | train step / full | "
        "merged fwd+forces / base | optimizer state (MB) | optimizer state / full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['trainable_parameters']:,} | {_cell(r, 'forward_forces_vs_base')} | "
            f"{_cell(r, 'scripted_vs_eager', '-')} | {_cell(r, 'train_step_vs_full')} | "
            f"{_cell(r, 'merged_forward_forces_vs_base', 'not mergeable')} | "
            f"{r['optimizer_state_bytes'] / 2**20:.2f} | {r['optimizer_state_vs_full']:.3f} |"
        )
    lines.append(
        "\nOptimizer state: Adam with amsgrad keeps three tensors per trained parameter (exp_avg, exp_avg_sq, "
        "max_exp_avg_sq), counted after one step."
    )
    (folder / "results.md").write_text("\n".join(lines) + "\n")
    write_json(
        folder / "results.json",
        {"rows": rows, "times_s": {f"{k[0]}|{k[1]}": v for k, v in times.items()}, "record": finished(record)},
    )
    _plot(rows, folder / "cost.png", model_name)
    print("\n".join(lines))


def _cell(row: dict, name: str, missing: str = "") -> str:
    """A ratio of the table with its quartiles: ``1.013 (0.998-1.021)``, or ``missing``."""
    quartiles = row[f"{name}_quartiles"]
    if quartiles is None:
        return missing
    low, median, high = quartiles
    return f"{median:.3f} ({low:.3f}-{high:.3f})"


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, name in zip(
        axes,
        ("forward_forces_vs_base", "train_step_vs_full", "optimizer_state_vs_full"),
        ("forward + forces / base", "training step / full", "optimizer state / full"),
    ):
        ax.barh(labels, [r[key] for r in rows])
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set(xlabel=name, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
