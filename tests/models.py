"""Small layers and networks built in the tests (no downloads)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from e3nn import nn as enn
from e3nn import o3

# unsimplified repeated blocks, odd parity, 0o scalars, l up to 3
LINEAR_IN = "8x0e+8x0e+4x1o+2x2e+3x0o+2x3o+2x1e"
LINEAR_OUT = "6x0e+4x1o+2x2e+2x0o+2x3o+3x0e"
TP_IN1 = "6x0e+4x1o+2x2e+2x0o"
TP_IN2 = "3x0e+1x1o"
TP_OUT = "5x0e+3x1o+2x2e+1x0o+2x1e"
NET_IN = LINEAR_IN
NET_OUT = "1x0e+1x1o"


class _Cases(Mapping):
    """name -> case, each layer built when its name is looked up (building all of e3nn's takes seconds)."""

    def __init__(self, factories: dict[str, Callable[[], tuple[torch.nn.Module, list[str | None], str]]]) -> None:
        self._factories = factories

    def __getitem__(self, name: str) -> tuple[torch.nn.Module, list[str | None], str]:
        return self._factories[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._factories)

    def __len__(self) -> int:
        return len(self._factories)


def layer_cases() -> Mapping[str, tuple[torch.nn.Module, list[str | None], str]]:
    """name -> (layer, operand irreps, output irreps) for every layer kind the e3nn backend adapts.

    Each lookup builds a new layer (from the current RNG state)."""
    return _Cases(
        {
            "o3.Linear+bias": lambda: (o3.Linear(LINEAR_IN, LINEAR_OUT, biases=True), [LINEAR_IN], LINEAR_OUT),
            "o3.Linear": lambda: (o3.Linear(LINEAR_IN, LINEAR_OUT), [LINEAR_IN], LINEAR_OUT),
            "FullyConnectedTensorProduct": lambda: (
                o3.FullyConnectedTensorProduct(TP_IN1, TP_IN2, TP_OUT),
                [TP_IN1, TP_IN2],
                TP_OUT,
            ),
            "FullyConnectedNet.layer": lambda: (enn.FullyConnectedNet([6, 9], torch.tanh).layer0, ["6x0e"], "9x0e"),
            "FullyConnectedNet.last": lambda: (enn.FullyConnectedNet([6, 9, 4]).layer1, ["9x0e"], "4x0e"),
            "nn.Linear": lambda: (torch.nn.Linear(6, 5), ["6x0e"], "5x0e"),
        }
    )


class MixedNet(torch.nn.Module):
    """o3.Linear -> tensor product with attributes -> FC net and nn.Linear on scalars -> readout."""

    def __init__(self) -> None:
        super().__init__()
        hidden = "5x0e+3x1o+2x2e+1x0o"
        self.embedding = o3.Linear(NET_IN, "6x0e+4x1o+2x2e+2x0o", biases=True)
        self.tp = o3.FullyConnectedTensorProduct("6x0e+4x1o+2x2e+2x0o", "3x0e", hidden)
        self.mlp = enn.FullyConnectedNet([5, 16, 5], torch.nn.functional.silu)
        self.dense = torch.nn.Linear(5, 5)
        self.readout = o3.Linear(hidden, NET_OUT)
        self.register_buffer("scale", torch.tensor([1.5]))

    def forward(self, x: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        h = self.tp(self.embedding(x), attrs)
        scalars = self.dense(self.mlp(h[:, :5]))
        return self.readout(torch.cat([scalars, h[:, 5:]], dim=-1)) * self.scale


def net_inputs(n: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Random node features and invariant attributes."""
    return torch.randn(n, o3.Irreps(NET_IN).dim), torch.randn(n, 3)
