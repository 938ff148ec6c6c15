"""Special cases of the adapters on e3nn layers: which merge, parameter counts, what they may change.

The contract every adapter keeps on every layer kind (identity at init, equivariance under
rotations and inversion, merging, saving, TorchScript) is ``test_contract.py``."""

import copy

import pytest
import torch
from models import layer_cases

import peft_equi
from peft_equi.testing import assert_equivariant, randomize_adapters


def _inputs(irreps_in):
    return [torch.randn(5, peft_equi.Irreps(i).dim) for i in irreps_in]


def _adapt(layer, adapter, options):
    return peft_equi.get_peft_model(layer, adapter, **options)


def test_dynamic_adapters_refuse_to_merge_and_static_ones_merge():
    layer, _, _ = layer_cases()["o3.Linear+bias"]
    for adapter, options, mergeable in [
        ("mmea", {}, False),
        ("film", {}, False),
        ("film", {"conditioning": "static"}, True),
        ("lora", {}, True),
        ("elora", {}, True),
        ("bitfit", {}, True),
    ]:
        model = _adapt(copy.deepcopy(layer), adapter, options)
        assert (model.adapted_layers[""].merge_blocker() is None) is mergeable, (adapter, options)


def test_bitfit_needs_a_layer_bias_to_merge():
    layer, _, _ = layer_cases()["o3.Linear"]  # no biases
    model = _adapt(layer, "bitfit", {})
    assert model.num_trainable_parameters() == 9  # 6x0e + 3x0e outputs get new biases
    with pytest.raises(peft_equi.NotMergeableError, match="stores no bias"):
        model.merge_and_unload()
    with_bias, _, _ = layer_cases()["o3.Linear+bias"]
    model = _adapt(with_bias, "bitfit", {})
    assert model.num_trainable_parameters() == 9  # the layer's own biases, unfrozen
    assert model.adapted_layers[""].adapter.bias is None


def test_adapters_change_only_what_equivariance_allows():
    """MMEA/FiLM shift 0e outputs only; 0o outputs are scaled, never shifted."""
    linear, irreps_in, _ = layer_cases()["o3.Linear"]
    model = peft_equi.get_peft_model(linear, "mmea", higher_order_modulation=False)
    randomize_adapters(model)
    (x,) = _inputs(irreps_in)
    y = model(x)
    with model.disable_adapter():
        y0 = model(x)
    changed = (y - y0).abs().amax(0) > 0
    spec = model.adapted_layers[""].spec
    scalar = torch.zeros(spec.irreps_out.dim, dtype=torch.bool)
    scalar[spec.scalar_component_index()] = True
    assert changed[scalar].all() and not changed[~scalar].any()


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_mmea_parameter_count_formula(rank):
    layer, _, _ = layer_cases()["o3.Linear"]
    model = peft_equi.get_peft_model(layer, "mmea", rank=rank)
    spec = model.adapted_layers[""].spec
    m0_in = spec.num_invariant_in()
    assert m0_in == 16  # both 8x0e input blocks; 0o inputs are not invariant
    assert model.num_trainable_parameters() == (m0_in + 1) * rank + (rank + 1) * spec.irreps_out.num_channels


def test_mmea_separate_heads_and_shared_gains_counts():
    layer, _, _ = layer_cases()["o3.Linear"]
    spec = peft_equi.discover(layer)[0].spec
    r, m0, n = 4, spec.num_invariant_in(), spec.irreps_out.num_channels
    separate = peft_equi.get_peft_model(copy.deepcopy(layer), "mmea", rank=r, heads="separate")
    assert separate.num_trainable_parameters() == 2 * (m0 + 1) * r + (r + 1) * n
    shared = peft_equi.get_peft_model(copy.deepcopy(layer), "mmea", rank=r, gain_sharing="irrep")
    n_scalar = spec.num_scalar_out()
    n_irrep_types = len({b.ir for b in spec.irreps_out if not b.ir.is_invariant})
    assert shared.num_trainable_parameters() == (m0 + 1) * r + (r + 1) * (n_scalar + n_irrep_types)


def test_mmea_without_invariant_input():
    from e3nn import o3

    layer = o3.Linear("4x1o+2x2e", "3x1o+1x0o")
    rule = peft_equi.Rule(adapter="mmea")
    with pytest.raises(peft_equi.UnsupportedLayerError, match="has none"):
        peft_equi.get_peft_model(layer, peft_equi.PeftConfig(rules=[rule]))
    with pytest.raises(peft_equi.RuleMatchError, match="on_missing_invariants"):
        peft_equi.get_peft_model(layer, "mmea")  # preset: skips, then the rule adapts nothing
    model = peft_equi.get_peft_model(layer, "mmea", rank=4, on_missing_invariants="constant")
    assert model.num_trainable_parameters() == (0 + 1) * 4 + (4 + 1) * 4
    randomize_adapters(model)
    assert_equivariant(model, ["4x1o+2x2e"], "3x1o+1x0o")


def test_lora_bottleneck_equals_weight_update():
    """LoRA as a weight update equals base(x) + s * B(A(x)) built from e3nn Linears."""
    from e3nn import o3

    irreps_in, irreps_out, rank, alpha = "8x0e+8x0e+4x1o+2x2e", "6x0e+4x1o+2x2e", 3, 2.0
    layer = o3.Linear(irreps_in, irreps_out)
    base = copy.deepcopy(layer)
    model = peft_equi.get_peft_model(layer, "lora", rank=rank, alpha=alpha)
    randomize_adapters(model)
    adapter = model.adapted_layers[""].adapter
    lora_irreps = f"{rank}x0e+{rank}x1o+{rank}x2e"
    a, b = o3.Linear(irreps_in, lora_irreps), o3.Linear(lora_irreps, irreps_out)
    with torch.no_grad():  # A: one (mul_in, r) block per input block; B: one (r, mul_out) per output block
        a.weight.copy_(torch.cat([adapter.lora_A[k].reshape(-1) for k in ["0_0e", "1_0e", "2_1o", "3_2e"]]))
        b.weight.copy_(torch.cat([adapter.lora_B[k].reshape(-1) for k in ["0", "1", "2"]]))
    x = torch.randn(4, a.irreps_in.dim)
    torch.testing.assert_close(model(x), base(x) + alpha / rank * b(a(x)), atol=1e-12, rtol=0)
