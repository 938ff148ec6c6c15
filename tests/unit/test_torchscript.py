"""TorchScript: special cases and whole models.  That every adapter on every backend's layers
compiles and gives the eager outputs is part of the contract (``test_contract.py``).

Each backend wraps its layers in an ``AdaptedLayer`` subclass with the layer's own fixed
signature, and the adapters' hooks are TorchScript-compatible code.  Compiled and eager
outputs agree to 1e-10 in float64 (they are bit-identical here: the same ops run).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from contract_cases import LAYERS_BY_NAME
from mace_models import batch_of, build_mace, energy_forces, molecules
from models import MixedNet, net_inputs

import peft_equi
from peft_equi.testing import randomize_adapters
from peft_equi.utils.dtype import torch_default_dtype


def _adapted(layer_name, adapter, options):
    module, args = LAYERS_BY_NAME[layer_name].make()
    model = peft_equi.get_peft_model(module, adapter, **options)
    randomize_adapters(model, std=0.3)
    return model, args


def test_mace_contraction_by_its_own_ops_equals_functional_call():
    """MACE's contraction run with the effective weight by its own ops == through ``functional_call`` (the eager
    path for a ``Contraction`` without those ops, which refuses to compile)."""
    model, args = _adapted("mace.SymmetricContraction", "elora", {})
    wrapped = model.base_model
    expected = wrapped(*args)
    wrapped.own_ops = False  # as for a MACE version whose Contraction lacks the ops
    torch.testing.assert_close(wrapped(*args), expected, atol=0, rtol=0)
    with pytest.raises(TypeError, match="lacks graph_opt_main"):
        torch.jit.script(wrapped)


def test_peft_model_scripts_as_its_base_model():
    net = MixedNet()
    model = peft_equi.get_peft_model(net, "mmea")
    randomize_adapters(model)
    x, attrs = net_inputs()
    scripted = torch.jit.script(model)
    assert isinstance(scripted, torch.jit.ScriptModule)
    torch.testing.assert_close(scripted(x, attrs), model(x, attrs), atol=1e-10, rtol=0)


@pytest.fixture(scope="module")
def small_mace():
    with torch_default_dtype(torch.float64):
        yield build_mace("small"), batch_of(molecules(2))


@pytest.mark.parametrize(("name", "merge"), [("mmea-paper", False), ("elora", False), ("elora", True)])
def test_compiled_mace_gives_the_eager_energies_and_forces(small_mace, name, merge):
    """As mace_run_train / create_lammps_model compile: e3nn's jit.compile, then a TorchScript file."""
    from e3nn.util import jit

    base, batch = small_mace
    model = peft_equi.get_peft_model(copy.deepcopy(base), name)
    randomize_adapters(model, std=0.05)
    energy, forces = energy_forces(model, batch)
    plain = model.merge_and_unload() if merge else model.base_model
    compiled = jit.compile(copy.deepcopy(plain))
    assert isinstance(compiled, torch.jit.ScriptModule)
    buffer = io.BytesIO()
    torch.jit.save(compiled, buffer)
    buffer.seek(0)
    for candidate in (compiled, torch.jit.load(buffer)):
        energy_c, forces_c = energy_forces(candidate, batch)
        torch.testing.assert_close(energy_c, energy, atol=1e-10, rtol=0)
        torch.testing.assert_close(forces_c, forces, atol=1e-10, rtol=0)
