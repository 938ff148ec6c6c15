"""deepcopy_module: deep copies of models with parameters torch cannot deep-copy (mace's EmptyParam)."""

from __future__ import annotations

import copy

import pytest
import torch
from contract_cases import ELEMENTS, SC_ELEMENTS, SC_IN, SC_OUT_MACE

import peft_equi
from peft_equi.utils.copying import deepcopy_module

pytest.importorskip("mace")


def _contraction():
    from mace.modules.symmetric_contraction import SymmetricContraction

    torch.manual_seed(0)
    # correlation 3 to 4x0e+4x1o+4x1e: MACE zeroes the 1e irrep's weights of a path that does not exist
    layer = SymmetricContraction(SC_IN, SC_OUT_MACE, correlation=3, num_elements=SC_ELEMENTS).double()
    x = torch.randn(len(ELEMENTS), 4, 1 + 3 + 5, dtype=torch.float64)
    y = torch.nn.functional.one_hot(ELEMENTS, SC_ELEMENTS).double()
    return layer, (x, y)


def _empty_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if type(p).__name__ == "EmptyParam"]


def test_torch_cannot_copy_the_zeroed_weights():
    layer, _ = _contraction()
    assert _empty_params(layer), "the case needs a zeroed path"
    with pytest.raises(TypeError):
        copy.deepcopy(layer)


@pytest.mark.parametrize("adapted", [False, True], ids=["plain", "adapted"])
def test_the_copy_is_equal_and_independent(adapted):
    layer, args = _contraction()
    model = peft_equi.get_peft_model(layer, "mmea", rank=2) if adapted else layer
    copied = deepcopy_module(model)
    torch.testing.assert_close(copied(*args), model(*args), rtol=0, atol=0)
    originals, copies = dict(model.named_parameters()), dict(copied.named_parameters())
    assert originals.keys() == copies.keys()
    for name, parameter in originals.items():
        twin = copies[name]
        assert type(twin) is type(parameter) and twin.requires_grad == parameter.requires_grad, name
        assert twin.data_ptr() != parameter.data_ptr(), f"{name} is shared with the original"
    for twin in _empty_params(copied):
        assert not twin.requires_grad and not twin.any()
