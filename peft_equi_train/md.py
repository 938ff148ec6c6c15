"""MD stability of a potential: Langevin NVT, then NVE, with ASE, and what practitioners check.

:func:`md_stability` runs ``nvt_steps`` of Langevin dynamics at ``temperature`` (ASE's
``Langevin``), then ``nve_steps`` of velocity Verlet, and watches every step:

- **bonds**: the atom pairs bonded in the starting structure (:func:`bond_graph`); the bond
  deviation at a step is ``max_ij |d_ij(t) - d_ij(0)|`` over those pairs (Angstrom). A bond
  stretched or squeezed by more than ``bond_tolerance`` (0.5 A, the criterion of Fu et al.,
  "Forces are not enough", TMLR 2023) is a failure;
- **separation**: an atom whose nearest neighbour is farther than ``separation`` (3 A) while it was
  closer at the start has flown off: a failure;
- **collapse**: two atoms closer than ``min_distance`` (0.5 A): a failure;
- **non-finite** energy or forces: a failure.

The run stops at the first failure (its time is ``first_failure_ps``); the molecule is
``intact`` when none occurred. The maximum force is the largest per-atom force norm seen. The
NVE energy drift is the slope of a least-squares line through the total energy (potential +
kinetic) of the NVE steps against time, divided by the number of atoms (eV/atom/ps); a constant
per-element energy shift changes neither it nor the dynamics.

Deterministic for a given ``seed``: the initial Maxwell-Boltzmann velocities and the Langevin
noise come from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

if TYPE_CHECKING:
    from ase import Atoms

    from peft_equi.families.base import Potential

logger = logging.getLogger(__name__)

BOND_SCALE = 1.25  # two atoms are bonded when closer than 1.25 x the sum of their covalent radii
BOND_TOLERANCE = 0.5  # Angstrom: a bond that moves further from its starting length is broken (Fu et al. 2023)
SEPARATION = 3.0  # Angstrom: an atom with no neighbour closer than this has flown off
MIN_DISTANCE = 0.5  # Angstrom: two atoms closer than this have collapsed onto each other


def bond_graph(atoms: Atoms) -> np.ndarray:
    """Boolean adjacency matrix: distance below ``BOND_SCALE`` times the sum of covalent radii."""
    from ase.data import covalent_radii

    radii = covalent_radii[atoms.numbers]
    distances = atoms.get_all_distances()
    bonded = distances < BOND_SCALE * (radii[:, None] + radii[None, :])
    np.fill_diagonal(bonded, False)
    return bonded


def energy_drift(times_ps: Sequence[float], energies: Sequence[float], n_atoms: int) -> float:
    """Slope of the least-squares line through ``energies`` (eV) against ``times_ps``, per atom (eV/atom/ps)."""
    t, e = np.asarray(times_ps, dtype=float), np.asarray(energies, dtype=float)
    if len(t) < 2:
        return float("nan")
    slope = np.polyfit(t - t.mean(), e - e.mean(), 1)[0]
    return float(slope / n_atoms)


@dataclass
class MDReport:
    """What :func:`md_stability` found. Times in ps, lengths in A, energies in eV, forces in eV/A."""

    n_atoms: int
    temperature_K: float
    timestep_fs: float
    nvt_steps: int
    nve_steps: int
    seed: int
    bond_tolerance_A: float
    steps_run: int
    intact: bool
    failure: str | None  # the first failure, in words
    first_failure_ps: float | None
    stable_ps: float  # time until the first failure, or the whole run
    max_bond_deviation_A: float
    max_force_eV_A: float
    min_distance_A: float
    mean_nvt_temperature_K: float | None
    nve_drift_eV_per_atom_per_ps: float | None  # None when NVE did not run to the end
    nve_max_energy_deviation_eV_per_atom: float | None
    trace: dict[str, list[float]] = field(default_factory=dict, repr=False)  # per step; not in summary()

    def summary(self) -> dict[str, Any]:
        """The report without the per-step trace (what the JSON report holds)."""
        return {k: v for k, v in asdict(self).items() if k != "trace"}


class _Failure(Exception):
    pass


def langevin(atoms: Atoms, temperature_k: float, timestep_fs: float, friction_per_fs: float, rng: np.random.Generator):
    """Start ``atoms`` for Langevin MD and return the integrator (``ase.md.langevin.Langevin``).

    The centre of mass is held fixed (``FixCom``: a molecule in vacuum does not drift); velocities
    are Maxwell-Boltzmann at ``temperature_k`` with no net translation or rotation; ``rng`` draws
    the velocities, then the integrator's noise::

        m_i dv_i/dt = F_i - gamma m_i v_i + sqrt(2 gamma m_i k_B T) xi_i(t)
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    atoms.set_constraint(FixCom())
    thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    return Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_k,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )


class _Watch:
    """Records every MD step of ``system`` and stops the run (raising :class:`_Failure`) at the first failure."""

    def __init__(self, system: Atoms, timestep: float, criteria: tuple[float, float, float], bar: Any) -> None:
        self.system, self.timestep, self.bar = system, timestep, bar
        self.bond_tolerance, self.separation, self.min_distance = criteria
        self.n = len(system)
        self.bonds = np.argwhere(np.triu(bond_graph(system)))
        start = system.get_all_distances()
        self.start_lengths = start[self.bonds[:, 0], self.bonds[:, 1]]
        np.fill_diagonal(start, np.inf)
        self.had_neighbour = start.min(axis=1) <= self.separation if self.n > 1 else np.zeros(self.n, dtype=bool)
        self.trace: dict[str, list[float]] = {
            k: [] for k in ("time_ps", "epot", "etot", "temperature", "bond_dev", "fmax")
        }
        self.phase_steps = {"nvt": 0, "nve": 0}
        self.failure: str | None = None
        self.closest = np.inf
        self.time_ps = 0.0

    def __call__(self, dynamics: Any, offset: int, phase: str) -> None:
        """ASE observer: record the state after ``dynamics.nsteps`` steps of ``phase`` (``offset`` steps before it)."""
        if phase == "nve" and dynamics.nsteps == 0 and self.trace["time_ps"]:
            return  # the NVE start is the NVT end, already recorded
        system = self.system
        epot = float(system.get_potential_energy())
        forces = system.get_forces(apply_constraint=False)
        distances = system.get_all_distances()
        moved = np.abs(distances[self.bonds[:, 0], self.bonds[:, 1]] - self.start_lengths)
        np.fill_diagonal(distances, np.inf)
        closest = float(distances.min()) if self.n > 1 else np.inf
        self.closest = min(self.closest, closest)
        self.time_ps = (offset + dynamics.nsteps) * self.timestep / 1000.0
        deviation = float(moved.max()) if len(self.bonds) else 0.0
        for key, value in (
            ("time_ps", self.time_ps),
            ("epot", epot),
            ("etot", epot + float(system.get_kinetic_energy())),
            ("temperature", float(system.get_temperature())),
            ("bond_dev", deviation),
            ("fmax", float(np.linalg.norm(forces, axis=1).max())),
        ):
            self.trace[key].append(value)
        if dynamics.nsteps:
            self.phase_steps[phase] += 1
            if self.bar is not None:
                self.bar.update(1)
        failure = self._failure(epot, forces, distances, moved, closest)
        if failure is not None:
            self.failure = f"{phase} step {dynamics.nsteps}: {failure}"
            raise _Failure

    def _failure(
        self, epot: float, forces: np.ndarray, distances: np.ndarray, moved: np.ndarray, closest: float
    ) -> str | None:
        """The module docstring's failures, in words, or ``None``."""
        if not (np.isfinite(epot) and np.isfinite(forces).all() and np.isfinite(self.system.positions).all()):
            return "non-finite energy or forces"
        if len(self.bonds) and moved.max() > self.bond_tolerance:
            i, j = self.bonds[np.argmax(moved)]
            return f"bond {i}-{j} moved {moved.max():.2f} A from its starting length"
        if self.n > 1 and (far := np.flatnonzero(self.had_neighbour & (distances.min(axis=1) > self.separation))).size:
            return f"atom {far[0]} separated (no neighbour within {self.separation} A)"
        if closest < self.min_distance:
            i, j = np.unravel_index(np.argmin(distances), distances.shape)
            return f"atoms {i} and {j} collapsed ({closest:.2f} A apart)"
        return None


def md_stability(
    calculator: Calculator,
    atoms: Atoms,
    temperature: float = 500.0,
    nvt_steps: int = 1000,
    nve_steps: int = 1000,
    timestep: float = 0.5,
    seed: int = 0,
    *,
    friction: float = 0.01,
    bond_tolerance: float = BOND_TOLERANCE,
    separation: float = SEPARATION,
    min_distance: float = MIN_DISTANCE,
    progress: bool = False,
    description: str = "md",
) -> MDReport:
    """Langevin NVT (``temperature`` K, ``friction`` 1/fs) then NVE, ``timestep`` fs; see the module docstring.

    ``atoms`` is copied; the trajectory does not touch it.
    """
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    system = atoms.copy()
    system.calc = calculator
    bar = tqdm(total=nvt_steps + nve_steps, desc=description, leave=False) if progress else None
    watch = _Watch(system, timestep, (bond_tolerance, separation, min_distance), bar)
    nvt = langevin(system, temperature, timestep, friction, np.random.default_rng(seed))
    try:
        nvt.attach(watch, interval=1, dynamics=nvt, offset=0, phase="nvt")
        nvt.run(nvt_steps)
        if nve_steps:
            nve = VelocityVerlet(system, timestep=timestep * units.fs)
            nve.attach(watch, interval=1, dynamics=nve, offset=nvt_steps, phase="nve")
            nve.run(nve_steps)
    except _Failure:
        pass
    finally:
        if bar is not None:
            bar.close()
    settings = {"temperature_K": float(temperature), "timestep_fs": float(timestep), "nvt_steps": int(nvt_steps),
                "nve_steps": int(nve_steps), "seed": int(seed), "bond_tolerance_A": float(bond_tolerance)}  # fmt: skip
    report = _report(watch, settings)
    logger.info("%s: %s", description, "intact" if report.intact else report.failure)
    return report


def _report(watch: _Watch, settings: dict[str, Any]) -> MDReport:
    """The :class:`MDReport` of a finished (or stopped) run."""
    trace, n, nvt_steps = watch.trace, watch.n, settings["nvt_steps"]
    failed = watch.failure is not None
    drift = deviation_nve = None
    if not failed and settings["nve_steps"]:
        times, etot = np.asarray(trace["time_ps"][nvt_steps:]), np.asarray(trace["etot"][nvt_steps:])
        drift = energy_drift(times, etot, n)
        deviation_nve = float(np.abs(etot - etot[0]).max() / n)
    nvt_temperatures = trace["temperature"][1 : nvt_steps + 1]
    fmax = np.asarray(trace["fmax"])
    return MDReport(
        n_atoms=n,
        **settings,
        steps_run=watch.phase_steps["nvt"] + watch.phase_steps["nve"],
        intact=not failed,
        failure=watch.failure,
        first_failure_ps=watch.time_ps if failed else None,
        stable_ps=watch.time_ps,
        max_bond_deviation_A=float(np.nanmax(trace["bond_dev"])) if trace["bond_dev"] else 0.0,
        max_force_eV_A=float(fmax.max()) if np.isfinite(fmax).all() else float("inf"),
        min_distance_A=float(watch.closest),
        mean_nvt_temperature_K=float(np.mean(nvt_temperatures)) if nvt_temperatures else None,
        nve_drift_eV_per_atom_per_ps=drift,
        nve_max_energy_deviation_eV_per_atom=deviation_nve,
        trace=trace,
    )


class PotentialCalculator(Calculator):
    """An ASE calculator (energy in eV, forces in eV/A) for any :class:`~peft_equi.families.base.Potential`.

    ``model`` is the module evaluated (default ``potential.model``): the base model, a ``PeftModel``
    (merged or not) or a merged copy; ``energy_shift`` maps atomic numbers to a per-atom energy
    correction in eV (a run's ``energy_correction.json``), which shifts energies only.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def __init__(
        self, potential: Potential, model: Any = None, energy_shift: Mapping[int, float] | None = None
    ) -> None:
        super().__init__()
        self.potential = potential
        self.module = potential.model if model is None else model
        self.shift = {int(z): float(d) for z, d in (energy_shift or {}).items()}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        import torch

        super().calculate(atoms, properties, system_changes)
        parameter = next(self.module.parameters())
        batch = self.potential.collate(self.potential.graphs([self.atoms]), parameter.device, parameter.dtype)
        energy, forces = self.potential.energy_forces(self.module, batch, training=False)
        total = float(energy.detach().sum()) + sum(self.shift.get(int(z), 0.0) for z in self.atoms.numbers)
        self.results = {
            "energy": total,
            "free_energy": total,
            "forces": forces.detach().to(torch.float64).cpu().numpy().copy(),
        }


def format_reports(reports: Mapping[str, MDReport]) -> str:
    """A markdown table of reports, one row per model."""
    lines = [
        "| model | intact | first failure (ps) | stable (ps) | max bond dev. (A) | max force (eV/A) |"
        " NVE drift (meV/atom/ps) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in reports.items():
        failure = "-" if r.first_failure_ps is None else f"{r.first_failure_ps:.4f}"
        drift = "-" if r.nve_drift_eV_per_atom_per_ps is None else f"{1000 * r.nve_drift_eV_per_atom_per_ps:.3f}"
        lines.append(
            f"| {name} | {'yes' if r.intact else 'no'} | {failure} | {r.stable_ps:.4f} | "
            f"{r.max_bond_deviation_A:.3f} | {r.max_force_eV_A:.3g} | {drift} |"
        )
    return "\n".join(lines)


def write_reports(reports: Mapping[str, MDReport], output: str | Path, structure: str | None = None) -> list[Path]:
    """Write ``md_report.json`` (the summaries) and ``md_stability.png`` (energy and bond deviation vs time)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    report_path = output / "md_report.json"
    models = {name: {k: _json_value(v) for k, v in r.summary().items()} for name, r in reports.items()}
    report_path.write_text(json.dumps({"structure": structure, "models": models}, indent=2, allow_nan=False))
    plot_path = output / "md_stability.png"
    plot_reports(reports, plot_path)
    return [report_path, plot_path]


def _json_value(value: Any) -> Any:
    """``value`` as strict JSON has it: numpy scalars as Python ones, a non-finite number as ``null``."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def plot_reports(reports: Mapping[str, MDReport], path: str | Path) -> None:
    """Total energy per atom (relative to the start) and the bond deviation against time, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name, r in reports.items():
        t = np.asarray(r.trace.get("time_ps", []))
        if not len(t):
            continue
        etot = np.asarray(r.trace["etot"])
        top.plot(t, (etot - etot[0]) / r.n_atoms, label=name)
        bottom.plot(t, r.trace["bond_dev"], label=name)
    if reports:
        first = next(iter(reports.values()))
        switch = first.nvt_steps * first.timestep_fs / 1000.0
        for axis in (top, bottom):
            axis.axvline(switch, color="grey", linestyle=":", linewidth=1)
    tolerance = next(iter(reports.values())).bond_tolerance_A if reports else BOND_TOLERANCE
    bottom.axhline(tolerance, color="red", linestyle="--", linewidth=1, label="failure threshold")
    top.set_ylabel("E_total - E_total(0) (eV/atom)")
    bottom.set_ylabel("max bond deviation (A)")
    bottom.set_xlabel("time (ps); dotted: NVT -> NVE")
    top.legend()
    bottom.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
