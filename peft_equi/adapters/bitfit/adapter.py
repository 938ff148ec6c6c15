"""BitFit on equivariant layers: biases on ``0e`` outputs only.

A bias is a constant added to the output; only ``0e`` channels are left unchanged by every
rotation and inversion, so only they may receive one (``y_{0e} <- y_{0e} + b``).  The
layer's own biases are unfrozen; ``0e`` output blocks without a bias of their own get a
new zero-initialised one, except in layers that must map zero to zero (``keeps_zero``:
radial networks, whose output has to vanish at the cutoff), which BitFit leaves alone.
Merging writes the new biases into the layer, which is possible only when the layer stores
a bias for those blocks (``nn.Linear(bias=True)``, e3nn ``Linear(biases=True)``);
otherwise merging raises and names the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.adapters.bitfit.config import BitfitConfig
from peft_equi.core.adapter import Adapter
from peft_equi.core.registry import register_adapter
from peft_equi.core.spec import LayerSpec


def _free_scalar_positions(spec: LayerSpec) -> torch.Tensor:
    """Positions, among the 0e output channels, of those the layer stores no bias for."""
    positions, start = [], 0
    for i in spec.scalar_blocks():
        mul = spec.irreps_out[i].mul
        if i not in spec.bias_blocks:
            positions.append(torch.arange(start, start + mul))
        start += mul
    return torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)


@register_adapter
class BitfitAdapter(Adapter):
    """BitFit: trainable biases on 0e outputs only (the layer's own, plus new ones where it has none)."""

    name = "bitfit"
    config_class = BitfitConfig

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: BitfitConfig) -> str | None:
        if spec.num_scalar_out() == 0:
            return f"bitfit needs 0e outputs to hold biases; outputs are {spec.irreps_out}"
        if spec.keeps_zero:
            return (
                "bitfit adds no bias to a layer that must map zero to zero (a bias-free dense layer, as the "
                "radial networks are: a constant there makes the energy jump at the cutoff)"
            )
        if not config.train_existing and len(_free_scalar_positions(spec)) == 0:
            return "bitfit with train_existing=False has nothing to train: the layer has a bias on every 0e output"
        return super().unsupported_reason(spec, config)

    def __init__(self, spec: LayerSpec, config: BitfitConfig) -> None:
        super().__init__(spec, config)
        self.trains_layer_bias = config.train_existing
        free = _free_scalar_positions(spec)
        self.bias = nn.Parameter(torch.zeros(len(free))) if len(free) else None
        self.register_buffer("free_positions", free, persistent=False)
        self.num_scalar_out = spec.num_scalar_out()

    def output_affine(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.bias is None:
            return None, None
        shift = self.bias.new_zeros(self.num_scalar_out).index_copy(0, self.free_positions, self.bias)
        return None, shift
