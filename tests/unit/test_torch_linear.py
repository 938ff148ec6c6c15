"""``nn.Linear`` backend: an adapter whose update is zero reproduces the layer bit for bit, on any BLAS."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import peft_equi
from peft_equi.testing import randomize_adapters


@pytest.mark.parametrize(
    ("adapter", "options"), [("lora", {}), ("elora", {"rank": 4}), ("bitfit", {"invariant_inputs": [""]})]
)
def test_effective_weight_reaches_f_linear_in_the_module_layout(monkeypatch, adapter, options):
    """The effective weight is handed to ``F.linear`` with the module weight's own (contiguous) strides.

    Exactness at initialisation then does not depend on which kernel the BLAS library picks
    for a layout (MKL picks another one for a transposed view, 1e-16 apart): the adapted
    and the plain layer run the same call on equal operands.
    """
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64, dtype=torch.float64)
    x = torch.randn(500, 64, dtype=torch.float64)  # big enough for MKL to pick layout-specific kernels
    expected = layer(x)
    seen = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: seen.append(w) or real(x, w, b))
    model = peft_equi.get_peft_model(copy.deepcopy(layer), adapter, **options)
    assert torch.equal(model(x), expected)
    assert seen and all(w.stride() == layer.weight.stride() and w.shape == layer.weight.shape for w in seen)

    randomize_adapters(model, std=0.1)  # and the layout holds for a nonzero update, merged or not
    adapted = model(x)
    merged = model.merge_and_unload()
    assert merged.weight.is_contiguous()
    torch.testing.assert_close(merged(x), adapted, atol=1e-12, rtol=0)
