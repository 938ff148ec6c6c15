"""GFN2-xTB labels and Langevin molecular dynamics, for the data sets the project makes itself.

The demo's acetamide set (``examples/data/make_xtb_dataset.py``) and the pretraining set of the
organic foundation model (``benchmarks/make_organic_xtb.py``) are both GFN2-xTB Langevin-MD
snapshots. This module holds what they share. It needs ``tblite`` (``pip install tblite``),
imported only when a calculator is made.

Threads: set ``OMP_NUM_THREADS=1`` (and the BLAS equivalents) before *anything* loads an
OpenMP runtime, i.e. at the top of the script, before importing numpy or ``peft_equi``
(which imports torch): without it the OpenMP runtimes of torch and tblite fight and tblite
runs many times slower (measured: benchmarks/README.md).  Both generators set it in their first
lines, one process per core.

Forces are ``F_i = -dE/dr_i`` of the GFN2-xTB total energy ``E`` (eV, eV/Angstrom).  tblite runs
with ``accuracy=0.01`` (100 times tighter SCF and integral thresholds than its default, which
leaves up to ~5e-4 eV/Angstrom of SCF noise in the forces).  The nuclei follow Langevin dynamics
(``ase.md.langevin.Langevin``)::

    m_i dv_i/dt = F_i - gamma m_i v_i + sqrt(2 gamma m_i k_B T) xi_i(t),   <xi xi'> = delta(t - t')
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peft_equi_train.md import langevin

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator

METHOD = "GFN2-xTB"
ACCURACY = 0.01  # tblite's SCF/integral accuracy; the default 1.0 leaves ~5e-4 eV/A of SCF noise in the forces
GROUND_STATE_MULTIPLICITY = {"H": 2, "C": 3, "N": 4, "O": 3}


def xtb_calculator(**kwargs: Any) -> Calculator:
    """A GFN2-xTB ASE calculator (energies in eV, forces in eV/Angstrom) with tight SCF, silent."""
    from tblite.ase import TBLite

    return TBLite(method=METHOD, accuracy=ACCURACY, verbosity=0, **kwargs)


def labelled(atoms: Atoms, energy: float, forces: np.ndarray, info: dict[str, Any]) -> Atoms:
    """A bare copy of ``atoms`` (numbers and positions only) carrying ``energy`` and ``forces``."""
    from ase import Atoms

    snapshot = Atoms(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(), pbc=False)
    snapshot.info.update(info)
    snapshot.info["energy"] = float(energy)
    snapshot.new_array("forces", np.asarray(forces, dtype=float))
    return snapshot


def langevin_snapshots(
    atoms: Atoms,
    temperature_k: float,
    n_configs: int,
    stride: int,
    equilibration_steps: int,
    timestep_fs: float,
    friction_per_fs: float,
    rng: np.random.Generator,
) -> Iterator[Atoms]:
    """Langevin MD of ``atoms`` with GFN2-xTB forces; yields a labelled snapshot every ``stride`` steps.

    The centre of mass is held fixed (``FixCom``); velocities start Maxwell-Boltzmann at ``T`` with no
    net translation or rotation; ``equilibration_steps`` steps run before the first snapshot.  Each
    snapshot carries ``config_type`` (``md_<T>K``) and ``md_step``; its forces are the raw ``-dE/dr``,
    not the FixCom-projected ones.  The caller may stop iterating early (e.g. when a bond breaks).
    """
    atoms.calc = xtb_calculator()
    dynamics = langevin(atoms, temperature_k, timestep_fs, friction_per_fs, rng)
    dynamics.run(equilibration_steps)
    config_type = f"md_{temperature_k:g}K"
    for _ in range(n_configs):
        dynamics.run(stride)
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces(apply_constraint=False)  # the raw -dE/dr, not FixCom-projected
        yield labelled(atoms, energy, forces, {"config_type": config_type, "md_step": dynamics.nsteps})


def isolated_atoms(symbols: Sequence[str]) -> list[Atoms]:
    """Single atoms at the origin with their GFN2-xTB energy, computed in their ground-state multiplicity.

    Without spin polarization, as GFN2-xTB is parametrized and as the molecules are computed.
    """
    from ase import Atoms

    result = []
    for symbol in symbols:
        multiplicity = GROUND_STATE_MULTIPLICITY[symbol]
        atom = Atoms(symbol, positions=[[0.0, 0.0, 0.0]], pbc=False)
        atom.calc = xtb_calculator(multiplicity=multiplicity)
        energy = atom.get_potential_energy()
        bare = Atoms(symbol, positions=[[0.0, 0.0, 0.0]], pbc=False)
        bare.info.update({"energy": float(energy), "config_type": "IsolatedAtom", "multiplicity": multiplicity})
        result.append(bare)
    return result


def read_labelled(path: str | Path) -> list[Atoms]:
    """Read an extxyz file, copying calculator results to ``info['energy']`` and ``arrays['forces']``.

    ASE >= 3.23 reads the reserved keys ``energy`` and ``forces`` into a ``SinglePointCalculator``,
    not into ``atoms.info`` / ``atoms.arrays``; this puts them in both places.
    """
    from ase.io import read

    images = read(str(path), index=":")
    for atoms in images:
        results = atoms.calc.results if atoms.calc is not None else {}
        if "energy" in results:
            atoms.info["energy"] = float(results["energy"])
        if "forces" in results:
            atoms.arrays["forces"] = np.array(results["forces"], dtype=float)
    return images


def check_round_trip(path: Path, written: Sequence[Atoms]) -> None:
    """Fail unless reading ``path`` gives back the written numbers, energies and forces (to the file's precision)."""
    images = read_labelled(path)
    if len(images) != len(written):
        raise RuntimeError(f"{path}: read {len(images)} configurations, wrote {len(written)}")
    for index, (got, want) in enumerate(zip(images, written, strict=True)):
        same = (
            np.array_equal(got.numbers, want.numbers)
            and np.allclose(got.positions, want.positions, rtol=0.0, atol=1e-7)
            and got.info["energy"] == want.info["energy"]
            and got.get_potential_energy() == want.info["energy"]
            and ("forces" not in want.arrays or np.allclose(got.arrays["forces"], want.arrays["forces"], atol=1e-7))
            and all(got.info.get(key) == value for key, value in want.info.items())
        )
        if not same:
            raise RuntimeError(f"{path}: configuration {index} does not read back as written")
