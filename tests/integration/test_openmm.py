"""OpenMM: an adapted MACE saved with ``save_adapted_mace`` runs in openmm-ml's MACE potential.

openmm 8.6.1 and openmmml 1.8 are in the tested set (requirements/ci.txt): openmm-ml 1.8
``torch.load``s the ``.model`` file and calls the eager model from an ``openmm.PythonForce``, so an
unmerged MMEA model runs as it is (peft_equi importable).  The run's energy correction, folded into
the atomic energies, is in openmm-ml's ``returnEnergyType="energy"``; its default interaction
energy leaves the atomic energies out.
"""

from __future__ import annotations

import copy

import numpy as np
import openmm
import openmmml
import pytest
import torch
from mace_models import batch_of, build_mace, molecules

import peft_equi
from peft_equi.families.mace.export import save_adapted_mace
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype

EV = 96.4853  # kJ/mol per eV, as openmm-ml converts


@pytest.mark.parametrize(("name", "merged"), [("mmea-paper", False), ("elora", True)])
def test_openmm_ml_runs_an_adapted_mace_with_the_eager_energy_and_forces(tmp_path, name, merged):
    from openmm import app, unit

    with torch_default_dtype(torch.float64):
        model = peft_equi.get_peft_model(build_mace("small"), name)
        randomize_adapters(model, std=0.05)
        atoms = molecules(1, seed=3)[0]
        out = model(dict(batch_of([atoms])), training=False, compute_force=True)
        forces = out["forces"].detach().numpy()
        correction = {"H": -0.41, "C": -3.2, "O": -5.7}  # a run's energy_correction.json, as {element: eV}
        total = float(out["energy"]) + sum(correction[s] for s in atoms.get_chemical_symbols())
        path = tmp_path / "adapted.model"
        assert save_adapted_mace(copy.deepcopy(model), path, energy_shift=correction) == merged

    topology = app.Topology()
    residue = topology.addResidue("MOL", topology.addChain())
    for symbol in atoms.get_chemical_symbols():
        topology.addAtom(symbol, app.Element.getBySymbol(symbol), residue)
    for kind, energy in (("energy", total), ("interaction_energy", float(out["interaction_energy"]))):
        system = openmmml.MLPotential("mace", modelPath=str(path)).createSystem(topology, returnEnergyType=kind)
        integrator = openmm.VerletIntegrator(0.5 * unit.femtosecond)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(atoms.positions * 0.1)  # nm
        state = context.getState(getEnergy=True, getForces=True)
        e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV
        f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / (10 * EV)
        assert abs(e - energy) < 1e-9, kind
        np.testing.assert_allclose(f, forces, atol=1e-10, rtol=0)

    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator.step(20)  # a short NVE run
    moved = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    assert np.isfinite(moved).all() and np.abs(moved - atoms.positions).max() > 1e-3
