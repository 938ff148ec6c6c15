"""Loading MACE files: e3nn-0.4.4 pickles (like every MACE-OFF/MP release), state dict + config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from mace_models import build_mace
from paths import FIXTURES

from peft_equi.errors import PeftEquiError
from peft_equi.families.mace.loading import load_mace_model, save_mace_state
from peft_equi.families.mace.potential import mace_batch

OLD_MODEL = FIXTURES / "mace_e3nn044_small.model"  # written by make_e3nn044_mace.py under e3nn 0.4.4


def _predict(model, reference):
    atoms = [Atoms(numbers=s["numbers"], positions=s["positions"]) for s in reference["structures"]]
    out = model(mace_batch(atoms, reference["atomic_numbers_table"], reference["r_max"]), compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def _reference():
    reference = json.loads((FIXTURES / "mace_e3nn044_small_ref.json").read_text())
    energies = torch.tensor([s["energy"] for s in reference["structures"]])
    forces = torch.tensor(np.concatenate([s["forces"] for s in reference["structures"]]))
    return reference, energies, forces


def test_e3nn044_model_file_loads_with_identical_predictions():
    reference, energies, forces = _reference()
    model = load_mace_model(OLD_MODEL, trust_pickle=True)
    assert type(model).__name__ == "ScaleShiftMACE"
    assert next(model.parameters()).dtype == torch.float64
    energy, force = _predict(model, reference)
    torch.testing.assert_close(energy, energies, atol=1e-10, rtol=0)
    torch.testing.assert_close(force, forces, atol=1e-10, rtol=0)


def test_pickles_need_explicit_trust():
    with pytest.raises(PeftEquiError, match="trust_pickle=True"):
        load_mace_model(OLD_MODEL)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mace_model(FIXTURES / "missing.model", trust_pickle=True)


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("content", ["text", "truncated"])
def test_an_unreadable_file_is_one_line_also_when_trusted(tmp_path, content, trust):
    path = tmp_path / "x.model"
    path.write_bytes(b"hello\n" if content == "text" else OLD_MODEL.read_bytes()[:100_000])
    with pytest.raises(PeftEquiError, match=r"x\.model: cannot read it as a torch file \(") as caught:
        load_mace_model(path, trust_pickle=trust)
    assert "\n" not in str(caught.value)


def test_state_dict_routes(tmp_path):
    from mace.tools.scripts_utils import extract_config_mace_model

    reference, energies, _ = _reference()
    model = load_mace_model(OLD_MODEL, trust_pickle=True)
    save_mace_state(model, tmp_path / "state.pt")
    reloaded = load_mace_model(tmp_path / "state.pt")  # no pickle: loads with weights_only=True
    torch.testing.assert_close(_predict(reloaded, reference)[0], energies, atol=1e-10, rtol=0)

    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(PeftEquiError, match="config="):
        load_mace_model(tmp_path / "bare.pt")
    rebuilt = load_mace_model(tmp_path / "bare.pt", config=extract_config_mace_model(model))
    torch.testing.assert_close(_predict(rebuilt, reference)[0], energies, atol=1e-10, rtol=0)


def test_e3nn06_model_file_round_trip(tmp_path):
    model = build_mace("small")
    torch.save(model, tmp_path / "new.model")
    loaded = load_mace_model(tmp_path / "new.model", trust_pickle=True)
    for key, value in model.state_dict().items():
        if "_compiled_main" not in key:
            assert torch.equal(loaded.state_dict()[key], value), key
