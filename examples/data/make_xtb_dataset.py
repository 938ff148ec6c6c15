"""Generate the demo's molecular data set: GFN2-xTB Langevin MD snapshots of acetamide.

The SevenNet-0 fine-tuning demo needs a small, real, self-made molecular data set. This script
makes it, with GFN2-xTB (tblite) as the reference method, in two files:

* ``acetamide_gfn2xtb_md.extxyz``: ``--n-configs`` snapshots of one Langevin trajectory of
  acetamide (CH3CONH2, 9 atoms: H, C, N, O) with their GFN2-xTB energies and forces.
* ``xtb_isolated_atoms.xyz``: GFN2-xTB energies of isolated H, C, N and O atoms (the reference
  atomic energies E0 of the data set).

Protocol
--------
Forces are ``F_i = -dE/dr_i`` of the GFN2-xTB total energy ``E`` (``tblite.ase.TBLite``, in eV
and eV/Angstrom). tblite runs with ``accuracy=0.01`` (100 times tighter SCF and integral thresholds
than its default, which leaves up to ~5e-4 eV/Angstrom of SCF noise in the forces) and its default
300 K electronic temperature (``E`` is then the Mermin free energy, equal to the energy for these
closed-shell molecules). The nuclei follow Langevin dynamics
(``ase.md.langevin.Langevin``, the Vanden-Eijnden--Ciccotti integrator)::

    m_i dv_i/dt = F_i - gamma m_i v_i + sqrt(2 gamma m_i k_B T) xi_i(t),   <xi xi'> = delta(t - t')

with time step ``dt`` = 0.5 fs, friction ``gamma`` = 0.01 / fs (velocity memory ~ 1/gamma = 100 fs) and
bath temperature ``T`` (600 K by default, so that the molecule explores anharmonic distortions and
methyl rotations without breaking bonds). The centre of mass is held fixed (``FixCom``). Starting
from the ``ase.build.molecule`` geometry with Maxwell-Boltzmann velocities at ``T`` (no net
translation or rotation), the trajectory is equilibrated for ``--equilibration-steps`` steps (1 ps)
and then one snapshot is stored every ``--stride`` steps (50 fs, half the thermostat's velocity
memory and several periods of every bond vibration), ``--n-configs`` snapshots in all.

Each snapshot is an ``ase.Atoms`` (no cell, ``pbc`` False) written by ``ase.io.write`` in extended
XYZ with ``energy`` (eV), ``config_type`` (``md_<T>K``) and ``md_step`` on the comment line and a
``forces`` column (eV/Angstrom). ASE >= 3.23 reads the reserved keys ``energy`` and ``forces``
back into a ``SinglePointCalculator`` (``atoms.get_potential_energy()``, ``atoms.get_forces()``),
not into ``atoms.info`` / ``atoms.arrays``; :func:`read_labelled` puts them in both places.

Isolated atoms are computed with the multiplicity of their ground state (H doublet, C triplet,
N quartet, O triplet) and without spin polarization, as GFN2-xTB is parametrized and as the
molecules are computed.

Determinism: all randomness comes from ``numpy.random.default_rng(--seed)``, and tblite runs on
one OpenMP thread (set here before tblite is imported), so the same versions on the same machine
write byte-identical files. Langevin trajectories are chaotic: another CPU, BLAS or tblite build
may give a different (equally valid) trajectory after a few hundred steps.

Run (about two minutes on one core), from the repository root::

    python3 -m venv /tmp/xtb-venv
    /tmp/xtb-venv/bin/pip install numpy==2.4.6 ase==3.29.0 tblite==0.8.0
    /tmp/xtb-venv/bin/python examples/data/make_xtb_dataset.py

Versions used for the committed files: Python 3.11.7, numpy 2.4.6, ase 3.29.0, tblite 0.8.0
(PyPI wheel), scipy 1.17.1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = DATA_DIR / "acetamide_gfn2xtb_md.extxyz"
DEFAULT_ATOMS_OUT = DATA_DIR / "xtb_isolated_atoms.xyz"
METHOD = "GFN2-xTB"
ACCURACY = 0.01  # tblite's SCF/integral accuracy; the default 1.0 leaves ~5e-4 eV/A of SCF noise in the forces
ELEMENTS = ("H", "C", "N", "O")
GROUND_STATE_MULTIPLICITY = {"H": 2, "C": 3, "N": 4, "O": 3}
BOND_SCALE = 1.25  # two atoms are bonded when closer than 1.25 x the sum of their covalent radii


def single_thread() -> None:
    """Pin tblite (OpenMP) and BLAS to one thread: deterministic sums, and faster for 9 atoms."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


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


def bond_graph(atoms: Atoms) -> np.ndarray:
    """Boolean adjacency matrix: distance below ``BOND_SCALE`` times the sum of covalent radii."""
    from ase.data import covalent_radii

    radii = covalent_radii[atoms.numbers]
    distances = atoms.get_all_distances()
    bonded = distances < BOND_SCALE * (radii[:, None] + radii[None, :])
    np.fill_diagonal(bonded, False)
    return bonded


def run_md(
    molecule: str,
    temperature_k: float,
    n_configs: int,
    stride: int,
    equilibration_steps: int,
    timestep_fs: float,
    friction_per_fs: float,
    seed: int,
) -> list[Atoms]:
    """Langevin MD with GFN2-xTB forces; one labelled snapshot every ``stride`` steps after equilibration."""
    from ase import units
    from ase.build import molecule as build_molecule
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    rng = np.random.default_rng(seed)
    atoms = build_molecule(molecule)
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(ELEMENTS))
    if unknown:
        raise ValueError(f"{molecule} contains {unknown}; only {ELEMENTS} are supported")
    atoms.calc = xtb_calculator()
    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_k,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    dynamics.run(equilibration_steps)
    config_type = f"md_{temperature_k:g}K"
    snapshots = []
    for _ in range(n_configs):
        dynamics.run(stride)
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces(apply_constraint=False)  # the raw -dE/dr, not FixCom-projected
        snapshots.append(labelled(atoms, energy, forces, {"config_type": config_type, "md_step": dynamics.nsteps}))
    return snapshots


def isolated_atoms(symbols: Sequence[str]) -> list[Atoms]:
    """Single atoms at the origin with their GFN2-xTB energy, computed in their ground-state multiplicity."""
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
    """Read an extxyz file, copying calculator results to ``info['energy']`` and ``arrays['forces']``."""
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


def summary(configs: Sequence[Atoms], e0: dict[str, float]) -> str:
    """Energy, force and geometry statistics of the MD snapshots, as text."""
    energies = np.array([a.info["energy"] for a in configs])
    forces = np.concatenate([a.arrays["forces"] for a in configs])
    baseline = sum(e0[s] for s in configs[0].get_chemical_symbols())
    norms = np.linalg.norm(forces, axis=1)
    min_distance = min(float(np.min(a.get_all_distances()[np.triu_indices(len(a), 1)])) for a in configs)
    reference_bonds = bond_graph(configs[0])
    changed = sum(not np.array_equal(bond_graph(a), reference_bonds) for a in configs)
    return "\n".join(
        [
            f"configurations: {len(configs)} of {configs[0].get_chemical_formula()} ({len(configs[0])} atoms)",
            f"energy (eV): min {energies.min():.4f} max {energies.max():.4f} mean {energies.mean():.4f} "
            f"std {energies.std():.4f} range {np.ptp(energies):.4f}",
            f"energy - sum(E0) (eV): min {energies.min() - baseline:.4f} max {energies.max() - baseline:.4f}",
            f"force components (eV/A): min {forces.min():.4f} max {forces.max():.4f} "
            f"rms {np.sqrt(np.mean(forces**2)):.4f}",
            f"|force| per atom (eV/A): mean {norms.mean():.4f} max {norms.max():.4f}",
            f"max |net force| of a configuration (eV/A): "
            f"{max(float(np.abs(a.arrays['forces'].sum(axis=0)).max()) for a in configs):.2e}",
            f"shortest interatomic distance (A): {min_distance:.4f}",
            f"configurations whose bond graph differs from the first: {changed}",
        ]
    )


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults make the committed files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="extxyz file of MD snapshots")
    parser.add_argument("--atoms-out", type=Path, default=DEFAULT_ATOMS_OUT, help="extxyz file of isolated atoms")
    parser.add_argument("--seed", type=int, default=20240611, help="seed of numpy.random.default_rng")
    parser.add_argument("--n-configs", type=int, default=200, help="number of snapshots to store")
    parser.add_argument("--temperature", type=float, default=600.0, help="Langevin bath temperature (K)")
    parser.add_argument("--molecule", default="CH3CONH2", help="ase.build.molecule name (H, C, N, O only)")
    parser.add_argument("--stride", type=int, default=100, help="MD steps between stored snapshots")
    parser.add_argument("--equilibration-steps", type=int, default=2000, help="MD steps before the first snapshot")
    parser.add_argument("--timestep", type=float, default=0.5, help="MD time step (fs)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    args = parser.parse_args(argv)
    for name in ("n_configs", "stride", "temperature", "timestep", "friction"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.equilibration_steps < 0:
        parser.error("--equilibration-steps must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Generate, write and verify both files; print statistics and checksums."""
    args = parse_args(argv)
    single_thread()
    from ase.io import write

    print(
        f"python {sys.version.split()[0]}, numpy {version('numpy')}, ase {version('ase')}, tblite {version('tblite')}"
    )
    start = time.perf_counter()
    atoms_list = isolated_atoms(ELEMENTS)
    e0 = {a.get_chemical_symbols()[0]: a.info["energy"] for a in atoms_list}
    configs = run_md(
        molecule=args.molecule,
        temperature_k=args.temperature,
        n_configs=args.n_configs,
        stride=args.stride,
        equilibration_steps=args.equilibration_steps,
        timestep_fs=args.timestep,
        friction_per_fs=args.friction,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - start
    for path, images in ((args.atoms_out, atoms_list), (args.out, configs)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(str(path), images, format="extxyz")
        check_round_trip(path, images)
        print(f"wrote {path} ({len(images)} configurations, {path.stat().st_size} bytes, sha256 {sha256(path)})")
    for atom in atoms_list:
        symbol, multiplicity = atom.get_chemical_symbols()[0], atom.info["multiplicity"]
        print(f"E0 {symbol} (multiplicity {multiplicity}): {atom.info['energy']!r} eV")
    print(summary(configs, e0))
    print(f"generation time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
