"""FiLM for equivariant features: ``y_{l,c} <- gamma_{l,c} y_{l,c} (+ beta_c on 0e)``.

``gamma`` has one entry per output ``(l, channel)``, shared by the ``2l+1`` components;
``beta`` exists on ``0e`` channels only.  Both are either a linear function of the
conditioning vector ``z`` - the layer's ``0e`` input channels, which are invariant:

.. math:: \\gamma = 1 + W_\\gamma z + b_\\gamma, \\qquad \\beta = W_\\beta z + b_\\beta

or learned constants (``conditioning='static'``: ``gamma = 1 + g``, ``beta = b``), which
fold into the layer's weight and bias and are therefore mergeable.  Everything starts at
zero, so the layer is unchanged at initialisation.  Invariant gains and ``0e`` shifts
commute with the Wigner matrices: equivariant.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.adapters.base import Adapter, InvariantReader, no_invariant_input_reason
from peft_equi.adapters.film.config import FilmConfig
from peft_equi.registry import register_adapter
from peft_equi.spec import LayerSpec


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


@register_adapter
class FilmAdapter(Adapter):
    """FiLM: per-channel gamma and 0e beta, from the invariant inputs or static (static: mergeable)."""

    name = "film"
    config_class = FilmConfig

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: FilmConfig) -> str | None:
        reason = super().unsupported_reason(spec, config)
        if reason is None and config.conditioning == "input":
            reason = no_invariant_input_reason(cls.name, spec, "conditioning='static'")
        return reason

    def __init__(self, spec: LayerSpec, config: FilmConfig) -> None:
        super().__init__(spec, config)
        n_gamma, n_beta = spec.num_channels_out, spec.num_scalar_out() if config.shift else 0
        self.dynamic = config.conditioning == "input"
        if self.dynamic:
            self.invariants = InvariantReader(spec)
            self.gamma = _zero_linear(self.invariants.width, n_gamma)
            self.beta = _zero_linear(self.invariants.width, n_beta) if n_beta else None
            self.register_buffer("gamma_index", spec.component_channel_index(), persistent=False)
            self.register_buffer("beta_index", spec.scalar_component_index(), persistent=False)
        else:
            self.gamma = nn.Parameter(torch.zeros(n_gamma))
            self.beta = nn.Parameter(torch.zeros(n_beta)) if n_beta else None

    def output_affine(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.dynamic:
            return None, None
        return 1.0 + self.gamma, self.beta

    def modulate(self, y: torch.Tensor, operands: tuple[torch.Tensor, ...]) -> torch.Tensor:
        z = self.invariants(operands)
        y = y * (1.0 + self.gamma(z)).index_select(-1, self.gamma_index)
        if self.beta is not None:
            beta = self.beta(z)
            y = y.index_add(-1, self.beta_index, beta.expand(*y.shape[:-1], beta.shape[-1]))
        return y
