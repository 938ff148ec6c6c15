"""Labelled structures for fine-tuning: reading (extxyz, rMD17), selection, splits, reference energies.

A :class:`Dataset` holds ``ase.Atoms`` with reference energies (eV) and forces (eV/A).
Fine-tuning a foundation model on data from another level of theory needs new per-element
reference energies: :func:`fit_reference_energies` solves ``E_i ~ sum_z n_iz e_z`` by least
squares; :func:`read_isolated_atom_energies` reads them from single-atom calculations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KCAL_PER_MOL_IN_EV = 0.04336410390059322
RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


@dataclass
class Dataset:
    """Structures with reference energies ``(n,)`` in eV and forces (one ``(n_atoms, 3)`` array each) in eV/A."""

    atoms: list
    energies: np.ndarray
    forces: list[np.ndarray]

    def __post_init__(self) -> None:
        if not (len(self.atoms) == len(self.energies) == len(self.forces)):
            raise ValueError("atoms, energies and forces must have the same length")

    def __len__(self) -> int:
        return len(self.atoms)

    def subset(self, indices: Sequence[int]) -> Dataset:
        """The structures at ``indices``, in that order."""
        return Dataset(
            [self.atoms[i] for i in indices], self.energies[list(indices)], [self.forces[i] for i in indices]
        )

    @property
    def atomic_numbers(self) -> list[int]:
        """Sorted distinct atomic numbers."""
        return sorted({int(z) for a in self.atoms for z in a.numbers})


def read_dataset(path: str | Path, energy_key: str = "energy", forces_key: str = "forces") -> Dataset:
    """Read an rMD17 ``.npz`` file or any ASE-readable file (extxyz) with energies and forces."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".npz":
        return read_rmd17(path)
    return read_extxyz(path, energy_key, forces_key)


def read_extxyz(path: str | Path, energy_key: str = "energy", forces_key: str = "forces") -> Dataset:
    """Structures of an extxyz file; energy from ``info[energy_key]``, forces from ``arrays[forces_key]``.

    ASE moves the keys ``energy`` and ``forces`` into a calculator's results when reading;
    those are used too.  A missing key is named in the error with the keys that are there.
    """
    from ase.io import read

    atoms_list = read(str(path), index=":")
    energies, forces = [], []
    for i, atoms in enumerate(atoms_list):
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = atoms.info.get(energy_key, results.get(energy_key))
        force = atoms.arrays.get(forces_key, results.get(forces_key))
        if energy is None or force is None:
            missing = energy_key if energy is None else forces_key
            available = sorted(set(atoms.info) | set(atoms.arrays) | set(results))
            raise KeyError(f"{path}: configuration {i} has no {missing!r} (available keys: {', '.join(available)})")
        energies.append(float(energy))
        forces.append(np.asarray(force, dtype=float).reshape(len(atoms), 3))
    return Dataset(atoms_list, np.asarray(energies), forces)


def read_rmd17(path: str | Path, indices: Sequence[int] | None = None) -> Dataset:
    """An rMD17 ``.npz`` file: kcal/mol and kcal/mol/A converted to eV and eV/A (1 kcal/mol = 0.0433641 eV)."""
    from ase import Atoms

    path = Path(path)
    with np.load(path) as data:
        missing = [k for k in RMD17_KEYS if k not in data.files]
        if missing:
            raise KeyError(f"{path} is not an rMD17 file: missing keys {missing} (has {sorted(data.files)})")
        numbers = data["nuclear_charges"]
        chosen = np.arange(len(data["energies"])) if indices is None else np.asarray(indices)
        coords, energies, forces = data["coords"][chosen], data["energies"][chosen], data["forces"][chosen]
    atoms = [Atoms(numbers=numbers, positions=xyz) for xyz in coords]
    return Dataset(atoms, energies * KCAL_PER_MOL_IN_EV, list(forces * KCAL_PER_MOL_IN_EV))


def read_isolated_atom_energies(path: str | Path) -> dict[int, float]:
    """Atomic number -> energy (eV) from an extxyz file of single atoms (``energy`` in info or results)."""
    from ase.io import read

    energies = {}
    for atoms in read(str(path), index=":"):
        if len(atoms) != 1:
            raise ValueError(f"{path}: expected isolated atoms, found a configuration of {len(atoms)} atoms")
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = atoms.info.get("energy", results.get("energy"))
        if energy is None:
            raise KeyError(f"{path}: isolated {atoms.get_chemical_formula()} has no energy")
        energies[int(atoms.numbers[0])] = float(energy)
    return energies


def shuffled_indices(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``seed``."""
    return np.random.default_rng(seed).permutation(n)


def select_and_split(
    dataset: Dataset, n_train: int | None, valid_fraction: float, seed: int
) -> tuple[Dataset, Dataset, Dataset]:
    """Draw ``n_train`` structures by ``seed`` (all if ``None``), then split off ``valid_fraction`` for validation.

    Returns ``(train, valid, rest)``, ``rest`` being the structures not drawn.  With the
    papers' protocol (``n_train=100``, ``valid_fraction=0.5``) this gives 50 training and 50
    validation structures drawn from the training file.
    """
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    order = shuffled_indices(len(dataset), seed)
    n_drawn = len(dataset) if n_train is None else n_train
    if n_drawn > len(dataset):
        raise ValueError(f"asked for {n_drawn} structures but the file has {len(dataset)}")
    drawn, rest = order[:n_drawn], sorted(order[n_drawn:])
    n_valid = round(n_drawn * valid_fraction)
    return dataset.subset(drawn[n_valid:]), dataset.subset(drawn[:n_valid]), dataset.subset(rest)


def composition_matrix(dataset: Dataset, elements: Sequence[int]) -> np.ndarray:
    """``(n_structures, n_elements)`` counts of each element."""
    index = {z: i for i, z in enumerate(elements)}
    counts = np.zeros((len(dataset), len(elements)))
    for row, atoms in enumerate(dataset.atoms):
        for z in atoms.numbers:
            counts[row, index[int(z)]] += 1
    return counts


def fit_reference_energies(dataset: Dataset, targets: np.ndarray | None = None) -> dict[int, float]:
    """Least-squares per-element energies ``e_z`` with ``targets_i ~ sum_z n_iz e_z`` (default targets: energies).

    For datasets of one composition the system is rank-deficient; the minimum-norm solution
    is returned (it reproduces the mean energy exactly, which is all such data can tell).
    """
    elements = dataset.atomic_numbers
    targets = dataset.energies if targets is None else targets
    solution, *_ = np.linalg.lstsq(composition_matrix(dataset, elements), targets, rcond=None)
    return {z: float(e) for z, e in zip(elements, solution)}
