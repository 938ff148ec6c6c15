"""A MACE model adapted with each adapter trains a few steps on real rMD17 energies and forces."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from mace_models import batch_of
from paths import SHARED_DATA

import peft_equi
from peft_equi.families.mace.architectures import HCO, build_mace
from peft_equi.testing import equivariant_adapters
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi_train.data import read_isolated_atom_energies, read_rmd17

DATA = SHARED_DATA
ETHANOL = DATA / "rmd17" / "rmd17_ethanol_train_01.npz"
E0S = DATA / "botnet_isolated_atoms" / "isolated_atoms_pbe_def2svp.xyz"


@pytest.fixture(scope="module")
def ethanol():
    if not ETHANOL.is_file():  # CI and developer machines have ../shared/data beside the checkout
        pytest.skip(f"rMD17 data not found at {ETHANOL}")
    with torch_default_dtype(torch.float64):
        data = read_rmd17(ETHANOL, indices=[0, 250, 500, 750])
        e0 = read_isolated_atom_energies(E0S)
        model = build_mace("small", HCO, [e0[z] for z in HCO])
        batch = batch_of(data.atoms)
        batch["energy"] = torch.tensor(data.energies)
        batch["forces"] = torch.tensor(np.concatenate(data.forces))
        yield model, batch


def _loss(model, batch):
    out = model(dict(batch), training=True, compute_force=True)
    n_atoms = torch.bincount(batch["batch"]).to(out["energy"].dtype)
    energy = ((out["energy"] - batch["energy"]) / n_atoms).square().mean()
    forces = (out["forces"] - batch["forces"]).square().mean()
    return energy + 10.0 * forces


@pytest.mark.parametrize("name", [*equivariant_adapters(), "mmea-paper"])
def test_adapted_mace_trains_on_rmd17_ethanol(ethanol, name):
    base, batch = ethanol
    torch.manual_seed(0)
    model = peft_equi.get_peft_model(copy.deepcopy(base), name)
    params = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam(params, lr=5e-3)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert _loss(model, batch).item() < losses[0], losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
