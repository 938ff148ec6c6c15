"""Reading reference data: rMD17 ``.npz`` files and isolated-atom energies (as ``ase.Atoms``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

KCAL_PER_MOL_IN_EV = 0.04336410390059322
RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


def read_rmd17(path: str | Path, indices: Sequence[int] | None = None) -> list:
    """Configurations of an rMD17 ``.npz`` file as ``ase.Atoms`` with energy (eV) and forces (eV/A).

    rMD17 stores kcal/mol and kcal/mol/A; they are converted with 1 kcal/mol =
    0.04336410390059322 eV.  ``indices`` selects configurations (default: all).
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rMD17 file not found: {path}")
    with np.load(path) as data:
        missing = [k for k in RMD17_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path} is not an rMD17 file: missing keys {missing} (has {sorted(data.files)})")
        numbers = data["nuclear_charges"]
        chosen = np.arange(len(data["energies"])) if indices is None else np.asarray(indices)
        coords, energies, forces = data["coords"][chosen], data["energies"][chosen], data["forces"][chosen]
    atoms_list = []
    for xyz, energy, force in zip(coords, energies, forces):
        atoms = Atoms(numbers=numbers, positions=xyz)
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(energy) * KCAL_PER_MOL_IN_EV, forces=force * KCAL_PER_MOL_IN_EV
        )
        atoms_list.append(atoms)
    return atoms_list


def read_isolated_atom_energies(path: str | Path) -> dict[int, float]:
    """Atomic number -> energy (eV) from an extxyz file of single atoms (``energy`` in info or results)."""
    from ase.io import read

    energies = {}
    for atoms in read(str(path), index=":"):
        if len(atoms) != 1:
            raise ValueError(f"{path}: expected isolated atoms, found a configuration of {len(atoms)} atoms")
        energy = atoms.info.get("energy")
        if energy is None and atoms.calc is not None:
            energy = atoms.get_potential_energy()
        if energy is None:
            raise ValueError(f"{path}: isolated {atoms.get_chemical_formula()} has no energy")
        energies[int(atoms.numbers[0])] = float(energy)
    return energies
