"""Labelled structures for fine-tuning: reading (extxyz, rMD17), selection, splits, reference energies.

A :class:`LabelledStructures` holds ``ase.Atoms`` with reference energies (eV) and forces (eV/A).
Fine-tuning a foundation model on data from another level of theory needs new per-element
reference energies: :func:`fit_reference_energies` solves ``E_i ~ sum_z n_iz e_z`` by least
squares; :func:`read_isolated_atom_energies` reads them from single-atom calculations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peft_equi.errors import DataError, one_line

KCAL_PER_MOL_IN_EV = 0.04336410390059322
RMD17_KEYS = ("nuclear_charges", "coords", "energies", "forces")


@dataclass
class LabelledStructures:
    """Structures with reference energies ``(n,)`` in eV and forces (one ``(n_atoms, 3)`` array each) in eV/A."""

    atoms: list
    energies: np.ndarray
    forces: list[np.ndarray]

    def __post_init__(self) -> None:
        if not (len(self.atoms) == len(self.energies) == len(self.forces)):
            raise ValueError("atoms, energies and forces must have the same length")

    def __len__(self) -> int:
        return len(self.atoms)

    def subset(self, indices: Sequence[int]) -> LabelledStructures:
        """The structures at ``indices``, in that order."""
        return LabelledStructures(
            [self.atoms[i] for i in indices], self.energies[list(indices)], [self.forces[i] for i in indices]
        )

    @property
    def atomic_numbers(self) -> list[int]:
        """Sorted distinct atomic numbers."""
        return sorted({int(z) for a in self.atoms for z in a.numbers})


def read_dataset(path: str | Path, energy_key: str = "energy", forces_key: str = "forces") -> LabelledStructures:
    """Read an rMD17 ``.npz`` file or any ASE-readable file (extxyz) with energies and forces.

    The data is checked on reading: an unreadable or empty file, a non-finite energy, force
    or position, or forces of the wrong shape raise :class:`~peft_equi.errors.DataError`
    naming the file and the structure (0-based index).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".npz":
        return read_rmd17(path)
    return read_extxyz(path, energy_key, forces_key)


def _read_structures(path: Path) -> list:
    """Every structure of an ASE-readable file; a parse error names the structure it stopped at."""
    from ase.io import iread

    structures: list = []
    if path.stat().st_size == 0:
        raise DataError(f"{path}: no structures in the file (it is empty)")
    try:
        for atoms in iread(str(path), index=":"):
            structures.append(atoms)
    except Exception as exc:  # ASE raises many types for malformed files
        where = f"structure {len(structures)}: " if structures else ""
        raise DataError(f"{path}: {where}cannot be read: {one_line(exc)}") from None
    if not structures:
        raise DataError(f"{path}: no structures in the file")
    return structures


#: Atoms closer than this (A), to each other or to a periodic image, are refused: no physical structure has them,
#: and atoms at one position give NaN forces.
MIN_DISTANCE = 0.1
#: Atomic numbers a structure may hold: the elements (H to Og).
MAX_ATOMIC_NUMBER = 118


def real_values(values, what: str) -> np.ndarray:
    """``values`` as a float array if they are real numbers (integers or floats); otherwise ``ValueError`` naming
    ``what`` (booleans, complex numbers, strings and objects are not numbers here, and are never cast)."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be real numbers, got {array.dtype.name} values")
    return array.astype(float)


def atomic_numbers_of(values, what: str = "atomic numbers") -> np.ndarray:
    """``values`` as integer atomic numbers, each an element (1 to 118); otherwise ``ValueError``.

    Floats are accepted only when integral (``6.0``); booleans, complex numbers and strings are refused.
    """
    array = np.asarray(values)
    if array.dtype.kind == "f":
        fractional = array[~(np.isfinite(array) & (array == np.round(array)))]
        if fractional.size:
            raise ValueError(f"{what} must be integers, got {float(fractional[0])}")
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got {array.dtype.name} values")
    bad = array[(array < 1) | (array > MAX_ATOMIC_NUMBER)]
    if bad.size:
        raise ValueError(f"{what}: {int(bad[0])} is not an element (1 to {MAX_ATOMIC_NUMBER})")
    return array.astype(np.int64)


def periodic_heights(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The widths of a cell across each periodic direction (A): volume (area, length) over the opposite face.

    For the periodic vectors ``P`` (rows of ``cell`` where ``pbc``), with Gram matrix ``G = P P^T``, the height
    along vector ``i`` is ``sqrt(det G / det G_(-i))``, ``G_(-i)`` without row and column ``i`` (1 for one vector).
    """
    vectors = np.asarray(cell, dtype=float)[np.asarray(pbc, dtype=bool)]
    gram = vectors @ vectors.T
    whole = max(np.linalg.det(gram), 0.0)
    heights = []
    for i in range(len(vectors)):
        rest = np.delete(np.delete(gram, i, axis=0), i, axis=1)
        face = np.linalg.det(rest) if rest.size else 1.0
        heights.append(np.sqrt(whole / face) if face > 0 else 0.0)
    return np.asarray(heights)


def closest_pair(atoms, within: float = MIN_DISTANCE) -> tuple[int, int, float] | None:
    """``(i, j, distance)`` of the closest two atoms (periodic images included) nearer than ``within``, or None."""
    if np.any(atoms.pbc):
        from ase.neighborlist import neighbor_list

        first, second, distance = neighbor_list("ijd", atoms, within, self_interaction=False)
    else:
        from scipy.spatial import cKDTree

        pairs = cKDTree(atoms.positions).query_pairs(within, output_type="ndarray")
        first, second = pairs[:, 0], pairs[:, 1]
        distance = np.linalg.norm(atoms.positions[first] - atoms.positions[second], axis=1)
    if len(distance) == 0:
        return None
    k = int(np.argmin(distance))
    return int(first[k]), int(second[k]), float(distance[k])


def check_structure(path: str | Path, index: int, atoms, energy: float, forces: np.ndarray) -> None:
    """Raise :class:`~peft_equi.errors.DataError` unless the structure can be used: atoms that are elements,
    finite values of the right shapes, a periodic cell with a width of at least :data:`MIN_DISTANCE` in each
    periodic direction, and no two atoms (or an atom and a periodic image) closer than :data:`MIN_DISTANCE`."""
    where = f"{path}: structure {index}"
    n_atoms = len(atoms)
    if n_atoms == 0:
        raise DataError(f"{where}: has no atoms")
    try:
        atomic_numbers_of(atoms.numbers)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    if forces.shape != (n_atoms, 3):
        raise DataError(f"{where}: forces have shape {forces.shape}, expected ({n_atoms}, 3) for {n_atoms} atoms")
    if not np.isfinite(energy):
        raise DataError(f"{where}: energy is {energy}")
    if not np.all(np.isfinite(forces)):
        raise DataError(f"{where}: non-finite forces (atom {int(np.argwhere(~np.isfinite(forces))[0, 0])})")
    positions = np.asarray(atoms.positions, dtype=float)
    if not np.all(np.isfinite(positions)):
        raise DataError(f"{where}: non-finite positions (atom {int(np.argwhere(~np.isfinite(positions))[0, 0])})")
    if np.any(atoms.pbc):
        cell = np.asarray(atoms.cell, dtype=float)
        if not np.all(np.isfinite(cell)):
            raise DataError(f"{where}: non-finite cell")
        heights = periodic_heights(cell, atoms.pbc)
        if heights.min() < MIN_DISTANCE:
            raise DataError(
                f"{where}: the periodic cell is {heights.min():.3g} A wide across a periodic direction "
                f"(zero volume, or under {MIN_DISTANCE} A)"
            )
    close = closest_pair(atoms)
    if close is not None:
        i, j, distance = close
        image = " (periodic images)" if i == j else ""
        raise DataError(f"{where}: atoms {i} and {j}{image} are {distance:.3g} A apart (closer than {MIN_DISTANCE} A)")


def read_extxyz(path: str | Path, energy_key: str = "energy", forces_key: str = "forces") -> LabelledStructures:
    """Structures of an extxyz file; energy from ``info[energy_key]``, forces from ``arrays[forces_key]``.

    ASE moves the keys ``energy`` and ``forces`` into a calculator's results when reading;
    those are used too.  A missing key is named in the error with the keys that are there.
    """
    path = Path(path)
    atoms_list = _read_structures(path)
    energies, forces = [], []
    for i, atoms in enumerate(atoms_list):
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = atoms.info.get(energy_key, results.get(energy_key))
        force = atoms.arrays.get(forces_key, results.get(forces_key))
        if energy is None or force is None:
            missing = energy_key if energy is None else forces_key
            available = sorted(set(atoms.info) | set(atoms.arrays) | set(results))
            raise DataError(f"{path}: structure {i} has no {missing!r} (available keys: {', '.join(available)})")
        try:
            energy = float(real_values(energy, "energy values"))
            force = real_values(force, "forces")
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: structure {i}: energy or forces are not numbers ({one_line(exc)})") from None
        check_structure(path, i, atoms, energy, force)
        energies.append(energy)
        forces.append(force)
    return LabelledStructures(atoms_list, np.asarray(energies), forces)


def read_rmd17(path: str | Path, indices: Sequence[int] | None = None) -> LabelledStructures:
    """An rMD17 ``.npz`` file: kcal/mol and kcal/mol/A converted to eV and eV/A (1 kcal/mol = 0.0433641 eV).

    ``indices``: the structures to read (0-based, in that order; default all).  Missing keys,
    shapes that disagree, non-finite values and indices out of range raise
    :class:`~peft_equi.errors.DataError` naming the file.
    """
    from ase import Atoms

    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a zip / npz
        raise DataError(f"{path}: cannot be read as an .npz file: {one_line(exc)}") from None
    with data:
        missing = [k for k in RMD17_KEYS if k not in data.files]
        if missing:
            raise DataError(f"{path}: not an rMD17 file: missing keys {missing} (has {sorted(data.files)})")
        try:
            arrays = {k: data[k] for k in RMD17_KEYS}
            numbers = atomic_numbers_of(arrays["nuclear_charges"], "nuclear_charges")
            for key in ("coords", "energies", "forces"):
                arrays[key] = real_values(arrays[key], key)
            energies_all = arrays["energies"].reshape(-1)
        except (TypeError, ValueError) as exc:  # object (pickled) or non-numeric arrays
            raise DataError(f"{path}: cannot be read: {one_line(exc)}") from None
        n = len(energies_all)
        shapes = {k: np.shape(arrays[k]) for k in RMD17_KEYS}
        expected = {"nuclear_charges": (len(numbers),), "coords": (n, len(numbers), 3), "forces": (n, len(numbers), 3)}
        for key, shape in expected.items():
            if shapes[key] != shape:
                raise DataError(f"{path}: {key} has shape {shapes[key]}, expected {shape} ({n} structures)")
        if n == 0:
            raise DataError(f"{path}: no structures in the file")
        chosen = np.arange(n) if indices is None else _checked_indices(path, indices, n)
        coords, energies, forces = arrays["coords"][chosen], energies_all[chosen], arrays["forces"][chosen]
    for name, values in (("energy", energies), ("forces", forces), ("positions", coords)):
        finite = np.isfinite(np.asarray(values, dtype=float)).reshape(len(chosen), -1).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            raise DataError(f"{path}: structure {int(chosen[first])}: non-finite {name}")
    _check_distances(path, coords, chosen)
    atoms = [Atoms(numbers=numbers, positions=xyz) for xyz in coords]
    return LabelledStructures(atoms, energies * KCAL_PER_MOL_IN_EV, list(forces * KCAL_PER_MOL_IN_EV))


def _check_distances(path: Path, coords: np.ndarray, chosen: np.ndarray) -> None:
    """No two atoms of a structure of ``coords`` ``(n, atoms, 3)`` closer than :data:`MIN_DISTANCE` (vectorised)."""
    n_atoms = coords.shape[1]
    if n_atoms < 2:
        return
    step = max(1, 4_000_000 // n_atoms**2)
    for start in range(0, len(coords), step):
        block = coords[start : start + step]
        squared = ((block[:, :, None, :] - block[:, None, :, :]) ** 2).sum(-1)
        squared[:, np.arange(n_atoms), np.arange(n_atoms)] = np.inf
        close = squared.reshape(len(block), -1).min(axis=1) < MIN_DISTANCE**2
        if close.any():
            k = int(np.argmax(close))
            i, j = divmod(int(np.argmin(squared[k])), n_atoms)
            raise DataError(
                f"{path}: structure {int(chosen[start + k])}: atoms {min(i, j)} and {max(i, j)} are "
                f"{np.sqrt(squared[k, i, j]):.3g} A apart (closer than {MIN_DISTANCE} A)"
            )


def _checked_indices(path: Path, indices: Sequence[int], n: int) -> np.ndarray:
    """``indices`` as an integer array, each in ``[0, n)``; otherwise a :class:`DataError` naming the first bad one."""
    chosen = np.asarray(indices)
    if chosen.size == 0:
        raise DataError(f"{path}: no structure indices given")
    if chosen.ndim != 1 or not np.issubdtype(chosen.dtype, np.integer):
        raise DataError(f"{path}: structure indices must be a list of integers, got {one_line(repr(indices))[:80]}")
    bad = chosen[(chosen < 0) | (chosen >= n)]
    if bad.size:
        raise DataError(f"{path}: structure index {int(bad[0])} out of range (the file has {n} structures)")
    return chosen.astype(np.int64)


def read_isolated_atom_energies(path: str | Path) -> dict[int, float]:
    """Atomic number -> energy (eV) from an extxyz file of single atoms (``energy`` in info or results).

    A structure of more than one atom, or without a finite numeric energy, raises
    :class:`~peft_equi.errors.DataError` naming the file and the structure.
    """
    path = Path(path)
    energies = {}
    for i, atoms in enumerate(_read_structures(path)):
        if len(atoms) != 1:
            raise DataError(f"{path}: expected isolated atoms, found a configuration of {len(atoms)} atoms")
        results = atoms.calc.results if atoms.calc is not None else {}
        energy = atoms.info.get("energy", results.get("energy"))
        if energy is None:
            raise DataError(f"{path}: structure {i}: isolated {atoms.get_chemical_formula()} has no energy")
        try:
            energy = float(real_values(energy, "energy values"))
        except (TypeError, ValueError):
            raise DataError(f"{path}: structure {i}: energy is not a number ({energy!r})") from None
        if not np.isfinite(energy):
            raise DataError(f"{path}: structure {i}: energy is {energy}")
        energies[int(atoms.numbers[0])] = energy
    return energies


def shuffled_indices(n: int, seed: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``seed``."""
    return np.random.default_rng(seed).permutation(n)


def select_and_split(
    dataset: LabelledStructures, n_train: int | None, valid_fraction: float, seed: int
) -> tuple[LabelledStructures, LabelledStructures, LabelledStructures]:
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
        raise DataError(f"n_train is {n_drawn} but the file has only {len(dataset)} structures")
    drawn, rest = order[:n_drawn], sorted(order[n_drawn:])
    n_valid = round(n_drawn * valid_fraction)
    return dataset.subset(drawn[n_valid:]), dataset.subset(drawn[:n_valid]), dataset.subset(rest)


def composition_matrix(dataset: LabelledStructures, elements: Sequence[int]) -> np.ndarray:
    """``(n_structures, n_elements)`` counts of each element."""
    index = {z: i for i, z in enumerate(elements)}
    counts = np.zeros((len(dataset), len(elements)))
    for row, atoms in enumerate(dataset.atoms):
        for z in atoms.numbers:
            counts[row, index[int(z)]] += 1
    return counts


def fit_reference_energies(dataset: LabelledStructures, targets: np.ndarray | None = None) -> dict[int, float]:
    """Least-squares per-element energies ``e_z`` with ``targets_i ~ sum_z n_iz e_z`` (default targets: energies).

    For datasets of one composition the system is rank-deficient; the minimum-norm solution
    is returned (it reproduces the mean energy exactly, which is all such data can tell).
    """
    elements = dataset.atomic_numbers
    targets = dataset.energies if targets is None else targets
    solution, *_ = np.linalg.lstsq(composition_matrix(dataset, elements), targets, rcond=None)
    return {z: float(e) for z, e in zip(elements, solution)}
