"""MD stability (``peft_equi_train.md``, ``peft-equi md``): sane models stay intact, broken ones caught, drift right."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.io import write
from paths import ROOT
from typer.testing import CliRunner

import peft_equi
from peft_equi.families.base import load_potential
from peft_equi_train import cli
from peft_equi_train.cli import app
from peft_equi_train.md import PotentialCalculator, bond_graph, energy_drift, md_stability, write_reports

MODEL = ROOT / "benchmarks" / "models" / "mace-small-no-aspirin.pt"
runner = CliRunner()


class Springs(Calculator):
    """Harmonic springs between all atom pairs at their starting lengths (conservative: an elastic network), plus
    ``leak`` eV added to the energy at every call (a known drift)."""

    implemented_properties = ["energy", "forces"]  # noqa: RUF012

    def __init__(self, atoms, k: float = 20.0, leak: float = 0.0) -> None:
        super().__init__()
        self.pairs = np.argwhere(np.triu(np.ones((len(atoms), len(atoms)), dtype=bool), k=1))
        self.rest = atoms.get_all_distances()[self.pairs[:, 0], self.pairs[:, 1]]
        self.k, self.leak, self.calls = k, leak, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        r = self.atoms.positions
        d = r[self.pairs[:, 1]] - r[self.pairs[:, 0]]
        length = np.linalg.norm(d, axis=1)
        stretch = length - self.rest
        forces = np.zeros_like(r)
        pull = (self.k * stretch / length)[:, None] * d
        np.add.at(forces, self.pairs[:, 0], pull)
        np.add.at(forces, self.pairs[:, 1], -pull)
        self.results = {"energy": 0.5 * self.k * (stretch**2).sum() + self.leak * self.calls, "forces": forces}
        self.calls += 1


def test_energy_drift_is_the_slope_per_atom():
    t = np.linspace(0.0, 2.0, 41)
    energy = -5.0 + 0.3 * t + 0.01 * np.sin(40 * t)
    assert energy_drift(t, energy, 3) == pytest.approx(0.1, abs=2e-3)
    assert energy_drift(t, np.full_like(t, 7.0), 3) == pytest.approx(0.0, abs=1e-12)


def test_nve_drift_of_a_known_leak_and_of_a_conservative_potential():
    atoms = molecule("CH3CH2OH")
    timestep, steps = 0.5, 200
    conservative = md_stability(Springs(atoms), atoms, 300.0, 0, steps, timestep, seed=1)
    assert conservative.intact and conservative.steps_run == steps
    assert abs(conservative.nve_drift_eV_per_atom_per_ps) < 1e-3
    leak = 1e-3  # eV per force call = per step
    leaking = md_stability(Springs(atoms, leak=leak), atoms, 300.0, 0, steps, timestep, seed=1)
    expected = leak / (timestep / 1000.0) / len(atoms)  # eV/atom/ps
    assert leaking.nve_drift_eV_per_atom_per_ps == pytest.approx(expected, rel=0.02)
    assert leaking.nve_max_energy_deviation_eV_per_atom == pytest.approx(leak * steps / len(atoms), rel=0.05)


def test_report_is_deterministic_for_a_seed_and_leaves_atoms_alone():
    atoms = molecule("CH3CH2OH")
    start = atoms.positions.copy()
    first = md_stability(Springs(atoms), atoms, 500.0, 30, 10, seed=3)
    second = md_stability(Springs(atoms), atoms, 500.0, 30, 10, seed=3)
    other = md_stability(Springs(atoms), atoms, 500.0, 30, 10, seed=4)
    assert first.trace == second.trace and first.summary() == second.summary()
    assert first.trace["etot"] != other.trace["etot"]
    assert np.array_equal(atoms.positions, start) and atoms.calc is None


def test_failures_are_named():
    atoms = molecule("H2O")
    flying = Springs(atoms, k=-200.0)  # an inverted spring pushes the bonded atoms apart
    report = md_stability(flying, atoms, 300.0, 200, 0, seed=0)
    assert not report.intact and "bond" in report.failure and report.first_failure_ps < 0.1
    assert report.stable_ps == report.first_failure_ps and report.nve_drift_eV_per_atom_per_ps is None


@pytest.fixture(scope="module")
def sane():
    return load_potential(str(MODEL))


def test_sane_model_stays_intact(sane):
    report = md_stability(PotentialCalculator(sane), molecule("CH3CH2OH"), 500.0, 60, 60, 0.5, seed=0)
    assert report.intact and report.failure is None and report.first_failure_ps is None
    assert report.steps_run == 120 and report.stable_ps == pytest.approx(0.06)
    assert report.max_bond_deviation_A < 0.3 and report.min_distance_A > 0.8
    assert 0.1 < report.max_force_eV_A < 20.0
    assert abs(report.nve_drift_eV_per_atom_per_ps) < 5e-3  # meV/atom/ps scale for a smooth model
    assert len(report.trace["time_ps"]) == 121


def test_random_readout_is_detected(sane):
    broken = load_potential(str(MODEL))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in broken.model.named_parameters():
            if name.startswith("readouts."):
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 10.0)
    report = md_stability(PotentialCalculator(broken), molecule("CH3CH2OH"), 500.0, 200, 200, 0.5, seed=0)
    assert not report.intact and report.failure is not None
    assert report.first_failure_ps < 0.05 and report.steps_run < 100
    assert report.max_force_eV_A > 100.0
    assert report.nve_drift_eV_per_atom_per_ps is None


def test_calculator_adds_the_energy_shift(sane):
    atoms = molecule("CH3OH")
    plain = PotentialCalculator(sane)
    shifted = PotentialCalculator(sane, energy_shift={1: 0.5, 6: -1.0, 8: 2.0})
    e0, f0 = plain.get_potential_energy(atoms), plain.get_forces(atoms)
    assert shifted.get_potential_energy(atoms) == pytest.approx(e0 + 4 * 0.5 - 1.0 + 2.0)
    assert np.array_equal(shifted.get_forces(atoms), f0)


def test_cli_md_before_after_writes_report_and_plot(sane, tmp_path):
    run = tmp_path / "run"
    peft_model = peft_equi.get_peft_model(load_potential(str(MODEL)).model, "lora", rank=2)
    peft_model.save_pretrained(run / "adapter")
    correction = {"atomic_numbers": sane.atomic_numbers, "delta_eV": [0.1] * len(sane.atomic_numbers)}
    (run / "energy_correction.json").write_text(json.dumps(correction))
    (run / "results.json").write_text("{}")  # a run writes it last: the run counts as finished
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    out = tmp_path / "md"
    args = ["md", "--model", str(MODEL), "--structure", str(structure), "--steps", "10", "--nve-steps", "10"]
    result = runner.invoke(app, [*args, "--run", str(run), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| foundation | yes |" in result.stdout and "| fine-tuned | yes |" in result.stdout
    report = json.loads((out / "md_report.json").read_text())
    assert set(report["models"]) == {"foundation", "fine-tuned"}
    assert report["models"]["foundation"]["steps_run"] == 20 and report["structure"] == str(structure)
    # the adapter is the identity at initialisation: the same trajectory as the foundation
    assert report["models"]["foundation"]["max_force_eV_A"] == pytest.approx(
        report["models"]["fine-tuned"]["max_force_eV_A"]
    )
    assert (out / "md_stability.png").stat().st_size > 1000

    missing = runner.invoke(app, ["md", "--model", str(MODEL), "--structure", str(tmp_path / "no.xyz")])
    assert missing.exit_code == 2 and "structure file not found" in missing.output
    nothing = runner.invoke(app, [*args[:5], "--steps", "0", "--nve-steps", "0"])
    assert nothing.exit_code == 2 and "not both 0" in nothing.output
    (tmp_path / "bad.xyz").write_text("not a structure\n")
    bad = runner.invoke(app, ["md", "--model", str(MODEL), "--structure", str(tmp_path / "bad.xyz")])
    assert bad.exit_code == 2 and "cannot read a structure" in bad.output


MD_OPTION_ERRORS = {
    "nan timestep": (["--timestep", "nan"], "--timestep must be a finite number > 0"),
    "inf temperature": (["--temperature", "inf"], "--temperature and --friction finite and >= 0"),
    "nan friction": (["--friction", "nan"], "--temperature and --friction finite and >= 0"),
    "negative timestep": (["--timestep", "-1"], "--timestep must be a finite number > 0"),
    "unknown device": (["--device", "gpu7"], "device 'gpu7' cannot be used"),
}


@pytest.mark.parametrize("case", list(MD_OPTION_ERRORS))
def test_md_option_errors_are_one_line_and_write_nothing(tmp_path, case):
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    extra, expected = MD_OPTION_ERRORS[case]
    args = ["md", "--model", str(MODEL), "--structure", str(structure), "--output", str(tmp_path / "md"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert expected in result.output
    assert not (tmp_path / "md").exists()


def test_quiet_turns_the_md_progress_bar_off(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "_md_reports", lambda models, atoms, device, settings: seen.update(settings) or {})
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    args = ["md", "--model", str(MODEL), "--structure", str(structure), "--output", str(tmp_path / "md")]
    for quiet, progress in (([], True), (["-q"], False)):
        result = runner.invoke(app, [*quiet, *args])
        assert result.exit_code == 0, result.output
        assert seen["progress"] is progress


def test_write_reports_without_trace_and_strict_json(tmp_path):
    atoms = molecule("H2O")
    report = md_stability(Springs(atoms), atoms, 300.0, 5, 5, seed=0)
    blown_up = replace(report, max_force_eV_A=float("nan"), nve_drift_eV_per_atom_per_ps=np.float32("inf"))
    paths = write_reports({"springs": report, "blown up": blown_up}, tmp_path / "out")
    body = json.loads(paths[0].read_text(), parse_constant=lambda token: pytest.fail(f"not strict JSON: {token}"))
    assert "trace" not in body["models"]["springs"] and paths[1].exists()
    assert body["models"]["springs"]["max_force_eV_A"] == pytest.approx(report.max_force_eV_A)
    assert body["models"]["blown up"]["max_force_eV_A"] is None
    assert body["models"]["blown up"]["nve_drift_eV_per_atom_per_ps"] is None


def test_bond_graph_counts_the_bonds_of_ethanol():
    assert np.triu(bond_graph(molecule("CH3CH2OH"))).sum() == 8  # C-C, C-O, O-H, 5 C-H
