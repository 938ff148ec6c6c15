"""Irreps values and the backend-free layer description."""

import math

import pytest
import torch
from e3nn import o3
from models import LINEAR_IN, LINEAR_OUT, TP_IN1, TP_IN2, TP_OUT

from peft_equi import Irrep, Irreps, Layout
from peft_equi.backends.e3nn.linear import E3nnLinear
from peft_equi.backends.e3nn.tensor_product import E3nnTensorProduct
from peft_equi.core.spec import LayerKind


def test_irreps_parse_keeps_repeated_blocks_and_order():
    irreps = Irreps("128x0e+128x0e+64x1o+3o+2x0o")
    assert [str(b) for b in irreps] == ["128x0e", "128x0e", "64x1o", "1x3o", "2x0o"]
    assert irreps.dim == 128 + 128 + 64 * 3 + 7 + 2
    assert irreps.num_channels == 128 + 128 + 64 + 1 + 2
    assert irreps.offsets() == [0, 128, 256, 448, 455]
    assert Irreps(o3.Irreps("2x1e+3x0o")) == Irreps("2x1e+3x0o")
    assert str(Irreps("")) == "0x0e" and Irreps("").dim == 0
    assert Irrep(0, 1).is_invariant and not Irrep(0, -1).is_invariant


@pytest.mark.parametrize("text", ["3y0e", "1x", "2x1q", "x1e"])
def test_irreps_parse_errors_name_the_block(text):
    with pytest.raises(ValueError, match="cannot parse irreps"):
        Irreps(text)


def test_irrep_rejects_bad_parity():
    with pytest.raises(ValueError, match="invalid irrep"):
        Irrep(1, 0)


def test_linear_spec_matches_e3nn_weight_layout():
    layer = o3.Linear(LINEAR_IN, LINEAR_OUT, biases=True)
    spec = E3nnLinear.describe(layer)
    assert spec.kind is LayerKind.LINEAR
    assert spec.weight_numel == layer.weight_numel
    assert spec.bias_blocks == (0, 5)  # the two 0e output blocks
    # rebuild the output from the spec's path blocks alone and compare with e3nn
    x = torch.randn(4, layer.irreps_in.dim)
    y = torch.zeros(4, layer.irreps_out.dim)
    in_off, out_off = spec.irreps_in[0].offsets(), spec.irreps_out.offsets()
    for path in spec.paths:
        (i,) = path.inputs
        block_in, block_out = spec.irreps_in[0][i], spec.irreps_out[path.output]
        xi = x[:, in_off[i] : in_off[i] + block_in.dim].reshape(4, block_in.mul, block_in.ir.dim)
        w = path.block(layer.weight)
        yj = torch.einsum("nui,uw->nwi", xi, w) * path.path_weight
        y[:, out_off[path.output] : out_off[path.output] + block_out.dim] += yj.reshape(4, -1)
    with torch.no_grad():
        layer.bias.normal_()
    start = 0
    for j in spec.bias_blocks:
        mul = spec.irreps_out[j].mul
        y[:, out_off[j] : out_off[j] + mul] += layer.bias[start : start + mul]
        start += mul
    assert torch.allclose(layer(x), y, atol=1e-12)


def test_tensor_product_spec_blocks_are_uvw():
    tp = o3.FullyConnectedTensorProduct(TP_IN1, TP_IN2, TP_OUT)
    spec = E3nnTensorProduct.describe(tp)
    assert spec.weight_numel == tp.weight_numel
    for path, ins in zip(spec.paths, [i for i in tp.instructions if i.has_weight], strict=True):
        assert path.shape == (tp.irreps_in1[ins.i_in1].mul, tp.irreps_in2[ins.i_in2].mul, tp.irreps_out[ins.i_out].mul)
        assert path.fan_in == math.prod(path.shape[:-1])


@pytest.mark.parametrize("layout", [Layout.MUL_IR, Layout.IR_MUL])
def test_component_channel_index_follows_layout(layout):
    spec = E3nnLinear.describe(o3.Linear("2x0e+2x1o", "1x0e+2x1o"))
    spec = type(spec)(spec.kind, spec.irreps_in, spec.irreps_out, spec.paths, layout=layout)
    index = spec.component_channel_index().tolist()
    if layout is Layout.MUL_IR:
        assert index == [0, 1, 1, 1, 2, 2, 2]
    else:
        assert index == [0, 1, 2, 1, 2, 1, 2]
    assert spec.scalar_component_index().tolist() == [0]


@pytest.mark.parametrize(
    ("irreps_in", "contiguous"),
    [("3x0e+2x1o+1x0o", True), ("2x1o+3x0e+1x0o+2x0e", False), ("2x1o+1x0o", False)],
)
def test_invariant_reader_reads_the_0e_channels_of_any_layout(irreps_in, contiguous):
    """Contiguous 0e channels are read with ``narrow``, scattered ones by index; both give the same values."""
    from peft_equi.core.adapter import InvariantReader

    spec = E3nnLinear.describe(o3.Linear(irreps_in, "2x0e+1x1o"))
    reader = InvariantReader(spec)
    x = torch.randn(5, Irreps(irreps_in).dim, dtype=torch.float64)
    index = spec.invariant_input_index(0)
    assert reader.channels[0].contiguous is contiguous
    torch.testing.assert_close(reader([x]), x[:, index], rtol=0, atol=0)
    torch.testing.assert_close(torch.jit.script(reader)([x]), x[:, index], rtol=0, atol=0)
