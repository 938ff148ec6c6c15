"""e3nn models: e3nn's own example networks and a hand-written network with odd parities.

``gate_points_2101.Network`` and ``v2106.gate_points_networks.SimpleNetwork`` read
``self.sc.output_mask`` of their self-connection tensor products (attributes an adapted
layer must expose).  :class:`OddParityNet` has ``0o``, ``1e`` and ``2o`` features,
multiplicity-1 irreps, a ``'uvu'`` tensor product with external weights (from a radial
``FullyConnectedNet``), a ``'uvu'`` tensor product with internal weights (no backend
describes it: not adaptable), ``Gate`` and ``BatchNorm`` (affine weights: not adaptable).
"""

from __future__ import annotations

from typing import Any

import torch

from peft_equi.testing import e3nn_rep
from zoo.common import Outputs, ZooModel, irreps_rotated

IN, OUT = "2x0e+1x1o", "1x0e+1x1o"
N_NODES = 6


def _graph() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pos = torch.randn(N_NODES, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(N_NODES, 5, generator=generator, dtype=torch.float64)
    return {"pos": pos, "x": x}


def _rotate_graph(data: dict[str, torch.Tensor], rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"pos": data["pos"] @ rotation.t(), "x": data["x"] @ e3nn_rep(IN, rotation).t()}


def _network_2101() -> tuple[torch.nn.Module, Any]:
    from e3nn.nn.models.gate_points_2101 import Network

    net = Network(
        irreps_in=IN,
        irreps_hidden="4x0e+2x0o+2x1o+2x1e+1x2e",
        irreps_out=OUT,
        irreps_node_attr=None,
        irreps_edge_attr="0e+1o+2e",
        layers=2,
        max_radius=2.5,
        number_of_basis=6,
        radial_layers=1,
        radial_neurons=8,
        num_neighbors=3.0,
        num_nodes=float(N_NODES),
    )
    return net, _graph()


def _simple_network_2106() -> tuple[torch.nn.Module, Any]:
    from e3nn.nn.models.v2106.gate_points_networks import SimpleNetwork

    net = SimpleNetwork(IN, OUT, max_radius=2.5, num_neighbors=3.0, num_nodes=float(N_NODES), mul=2, layers=2, lmax=2)
    with torch.no_grad():  # e3nn starts the conv-output gates at zero: give them values, so the path counts
        for module in net.modules():
            if hasattr(module, "alpha"):
                module.alpha.weight.normal_()
    return net, _graph()


class OddParityNet(torch.nn.Module):
    """Node features -> uvu convolution (external weights) -> Gate -> BatchNorm -> internal uvu -> readout."""

    def __init__(self) -> None:
        super().__init__()
        from e3nn import nn as enn
        from e3nn import o3

        hidden = o3.Irreps("3x0e+1x0o+1x1o+1x1e+1x2o")
        self.sh = o3.Irreps("0e+1o+2e")
        self.embed = o3.Linear(IN, hidden)
        instructions, mid = [], []
        for i, (mul, ir_in) in enumerate(hidden):
            for j, (_, ir_sh) in enumerate(self.sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in hidden:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        self.conv = o3.TensorProduct(hidden, self.sh, mid, instructions, internal_weights=False, shared_weights=False)
        self.radial = enn.FullyConnectedNet([6, 12, self.conv.weight_numel], torch.nn.functional.silu)
        gated = o3.Irreps("1x1o+1x1e+1x2o")
        self.gate = enn.Gate("2x0e+1x0o", [torch.nn.functional.silu, torch.tanh], "3x0e", [torch.sigmoid], gated)
        self.to_gate = o3.Linear(mid, self.gate.irreps_in)
        self.norm = enn.BatchNorm(self.gate.irreps_out, affine=True)
        out = self.gate.irreps_out
        self.square = o3.TensorProduct(
            out, "1x0e", out, [(i, 0, i, "uvu", True) for i in range(len(out))], internal_weights=True
        )
        self.readout = o3.Linear(out, OUT)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        from e3nn import o3
        from e3nn.math import soft_one_hot_linspace

        pos = data["pos"]
        src, dst = torch.meshgrid(torch.arange(len(pos)), torch.arange(len(pos)), indexing="ij")
        keep = src != dst
        src, dst = src[keep], dst[keep]
        vec = pos[src] - pos[dst]
        length = vec.norm(dim=1)
        basis = soft_one_hot_linspace(length, 0.0, 4.0, 6, basis="smooth_finite", cutoff=True)
        edge_sh = o3.spherical_harmonics(self.sh, vec, True, normalization="component")
        h = self.embed(data["x"])
        messages = self.conv(h[src], edge_sh, self.radial(basis))
        h = torch.zeros(len(pos), messages.shape[1], dtype=messages.dtype).index_add(0, dst, messages)
        h = self.norm(self.gate(self.to_gate(h)))
        h = self.square(h, torch.ones(len(pos), 1, dtype=h.dtype))
        return self.readout(h).sum(0, keepdim=True)


def _odd_parity_net() -> tuple[torch.nn.Module, Any]:
    net = OddParityNet()
    net.eval()  # BatchNorm with its running statistics (batch statistics are equivariant too)
    return net, _graph()


def _call(model: torch.nn.Module, data: dict[str, torch.Tensor]) -> Outputs:
    return (model(data),)


MODELS = [
    ZooModel("e3nn.gate_points_2101.Network", _network_2101, _call, _rotate_graph, irreps_rotated(OUT)),
    ZooModel("e3nn.v2106.SimpleNetwork", _simple_network_2106, _call, _rotate_graph, irreps_rotated(OUT)),
    ZooModel(
        "e3nn OddParityNet (0o, 1e, 2o, uvu, Gate, BatchNorm)",
        _odd_parity_net,
        _call,
        _rotate_graph,
        irreps_rotated(OUT),
    ),
]
