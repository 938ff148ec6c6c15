"""Quick start: attach each adapter by name to a small equivariant network, train a few steps, merge.

The "pretrained" network is a random e3nn model (o3.Linear, a tensor product, an MLP and an
nn.Linear); the fine-tuning target is a perturbed copy of it, so there is something to learn.
For each adapter the demo prints the trainable parameters, the loss before and after 60
Adam steps, the equivariance error (random rotations and inversion, float64) and whether
merging reproduces the adapted model.
"""

from __future__ import annotations

import copy

import torch
from e3nn import nn as enn
from e3nn import o3

import peft_equi
from peft_equi.testing import equivariance_error

IRREPS_IN = "8x0e+4x1o+2x2e"
HIDDEN = "8x0e+4x1o+2x2e+2x0o"
IRREPS_OUT = "1x0e+1x1o"


class SmallEquivariantNet(torch.nn.Module):
    """Node features + invariant attributes -> an energy-like scalar and a vector per node."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = o3.Linear(IRREPS_IN, HIDDEN, biases=True)
        self.tp = o3.FullyConnectedTensorProduct(HIDDEN, "4x0e", HIDDEN)
        self.mlp = enn.FullyConnectedNet([8, 32, 8], torch.nn.functional.silu)
        self.mix = torch.nn.Linear(8, 8)
        self.readout = o3.Linear(HIDDEN, IRREPS_OUT)

    def forward(self, x: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        h = self.tp(self.embedding(x), attrs)
        scalars = self.mix(self.mlp(h[:, :8]))
        return self.readout(torch.cat([scalars, h[:, 8:]], dim=-1))


def main() -> None:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    pretrained = SmallEquivariantNet()
    teacher = copy.deepcopy(pretrained)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))
    x = torch.randn(256, o3.Irreps(IRREPS_IN).dim)
    attrs = torch.randn(256, 4)
    with torch.no_grad():
        target = teacher(x, attrs)

    print("peft-equi demo: adapters", ", ".join(peft_equi.list_adapters()))
    print(peft_equi.format_inspection(peft_equi.inspect_model(pretrained, "mmea", rank=8)))
    print()
    header = f"{'adapter':<8} {'trainable':>9} {'loss before':>12} {'loss after':>11} {'equiv err':>10}  merge"
    print(header)
    print("-" * len(header))
    for name in ["lora", "elora", "mmea", "bitfit", "film"]:
        torch.manual_seed(1)
        model = peft_equi.get_peft_model(copy.deepcopy(pretrained), name)
        trainable = model.num_trainable_parameters()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        with torch.no_grad():
            before = torch.nn.functional.mse_loss(model(x, attrs), target).item()
        for _ in range(60):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x, attrs), target)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = torch.nn.functional.mse_loss(model(x, attrs), target).item()
        error = equivariance_error(model, [IRREPS_IN, None], IRREPS_OUT, args=[x[:16], attrs[:16]])
        try:
            adapted = model(x, attrs).detach()
            merged = model.merge_and_unload()
            merge = f"merged, max diff {(merged(x, attrs) - adapted).abs().max().item():.1e}"
        except peft_equi.NotMergeableError as exc:
            merge = "not merged: " + str(exc).split(": ", 2)[-1].split(";")[0]
        print(f"{name:<8} {trainable:>9,} {before:>12.4e} {after:>11.4e} {error:>10.1e}  {merge}")
        if after >= before:
            raise SystemExit(f"{name}: training did not reduce the loss")
        if error > 1e-10:
            raise SystemExit(f"{name}: equivariance error {error:.2e}")
    print("\nall adapters trained, stayed equivariant, and merged where mergeable")


if __name__ == "__main__":
    main()
