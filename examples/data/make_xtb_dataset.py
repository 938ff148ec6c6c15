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
one OpenMP thread (set at the top, before numpy, torch or tblite load), so the same versions on the same machine
write byte-identical files. Langevin trajectories are chaotic: another CPU, BLAS or tblite build
may give a different (equally valid) trajectory after a few hundred steps.

Run (about two minutes on one core), from the repository root, in the project's environment
(``make`` installs tblite with the tested set; the MD and labelling code is ``peft_equi_train.xtb``)::

    .venv/bin/python examples/data/make_xtb_dataset.py

Versions used for the committed files: Python 3.11.7, numpy 2.4.6, ase 3.29.0, tblite 0.8.0
(PyPI wheel), scipy 1.17.1.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy, torch and tblite load
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402

from peft_equi.utils.files import sha256  # noqa: E402
from peft_equi_train.md import bond_graph  # noqa: E402
from peft_equi_train.xtb import check_round_trip, isolated_atoms, langevin_snapshots  # noqa: E402

if TYPE_CHECKING:
    from ase import Atoms

DATA_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = DATA_DIR / "acetamide_gfn2xtb_md.extxyz"
DEFAULT_ATOMS_OUT = DATA_DIR / "xtb_isolated_atoms.xyz"
ELEMENTS = ("H", "C", "N", "O")


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
    from ase.build import molecule as build_molecule

    rng = np.random.default_rng(seed)
    atoms = build_molecule(molecule)
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(ELEMENTS))
    if unknown:
        raise ValueError(f"{molecule} contains {unknown}; only {ELEMENTS} are supported")
    return list(
        langevin_snapshots(
            atoms, temperature_k, n_configs, stride, equilibration_steps, timestep_fs, friction_per_fs, rng
        )
    )


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
