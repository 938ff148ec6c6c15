"""MMEA: per-channel magnitudes of equivariant features, gated by invariants.

For a layer with output ``y`` and invariant (``0e``) input channels ``x0`` (``m0`` of them):

.. math::
    h = \\sigma(W_h x_0 + b_h) \\in \\mathbb{R}^r, \\qquad
    \\gamma = W_\\gamma h + b_\\gamma, \\qquad \\beta = W_\\beta h + b_\\beta

    y_{l,c} \\leftarrow \\varphi(\\gamma_{l,c})\\, y_{l,c} \\;(l \\ge 1 \\text{ or } 0o), \\qquad
    y_{0e,c} \\leftarrow y_{0e,c} + \\beta_c

with ``sigma`` = SiLU and ``phi`` = exp (or ``1 + x``).  Words: ``h`` is the *gate* (module
``heads``), ``phi(gamma)`` the *gains*, ``W_gamma, b_gamma`` the *gain map* (module ``scale``,
a name kept for saved state dicts), ``beta`` the *shifts* and ``W_beta, b_beta`` the *shift
map* (module ``shift``).  ``gamma`` is invariant and shared by the ``2l+1`` components of a
channel, so ``phi(gamma) D(R) y = D(R) phi(gamma) y``; the shift touches only ``0e``
channels (never ``0o``, which flips sign under inversion), and none in a layer that must map
zero to zero (``LayerSpec.keeps_zero``: radial networks).  With one shared gate the
parameter count is ``(m0 + 1) r + (r + 1) sum(mul_out)``.

Initialisation (as the reference code, except where ``init="identity"`` says otherwise):
``W_h`` PyTorch's default ``nn.Linear`` init, ``b_h = 0``; ``W_gamma = 0, b_gamma = 0``;
``b_beta = 0`` and ``W_beta = 0`` (``init="identity"``: the layer is unchanged at
initialisation) or PyTorch's default / ``N(0, shift_init_std^2)`` (``init="reference"``: the
shift is not zero at step 0).  The gains depend on the input, so MMEA cannot be merged into the layer.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from peft_equi.adapters.mmea.config import MmeaConfig
from peft_equi.core.adapter import Adapter, InvariantReader, no_invariant_input_reason
from peft_equi.core.registry import register_adapter
from peft_equi.core.spec import LayerSpec


def _gain_columns(spec: LayerSpec, config: MmeaConfig) -> tuple[torch.Tensor, int]:
    """For each output component, its gain column; 0e components use the last column (gain 1)."""
    if config.gain_sharing == "channel":
        keys = [(i, c) for i, block in spec.irreps_out.blocks() for c in range(block.mul)]
    else:
        keys = [block.ir for _, block in spec.irreps_out.blocks()]
    modulated = [k for k in keys if not _is_scalar_key(spec, k)]
    columns = {key: n for n, key in enumerate(dict.fromkeys(modulated))}
    n = len(columns)
    channel_column = []
    for i, block in spec.irreps_out.blocks():
        for c in range(block.mul):
            key = (i, c) if config.gain_sharing == "channel" else block.ir
            channel_column.append(columns.get(key, n))
    channel_column_t = torch.tensor(channel_column, dtype=torch.long)
    return channel_column_t[spec.component_channel_index()], n


def _is_scalar_key(spec: LayerSpec, key) -> bool:
    ir = spec.irreps_out[key[0]].ir if isinstance(key, tuple) else key
    return ir.is_invariant


def _head(width: int, rank: int) -> nn.Linear:
    """The gate ``W_h x0 + b_h`` (``b_h = 0``); without invariant inputs (``width == 0``) a learned constant."""
    if width > 0:
        head = nn.Linear(width, rank)
        nn.init.zeros_(head.bias)
        return head
    with warnings.catch_warnings():  # torch warns that initialising the empty weight is a no-op
        warnings.simplefilter("ignore", UserWarning)
        head = nn.Linear(0, rank)
    nn.init.uniform_(head.bias, -1.0, 1.0)
    return head


@register_adapter
class MmeaAdapter(Adapter):
    """MMEA: per-channel gains and 0e shifts computed from an invariant gate (not mergeable)."""

    name = "mmea"
    config_class = MmeaConfig

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: MmeaConfig) -> str | None:
        reason = super().unsupported_reason(spec, config)
        if reason is None and config.on_missing_invariants == "error":
            reason = no_invariant_input_reason(cls.name, spec, "on_missing_invariants='constant'")
        if reason is None:
            has_scalar = spec.num_shiftable_out() > 0
            has_other = spec.num_scalar_out() < spec.num_channels_out
            if not ((config.scalar_modulation and has_scalar) or (config.higher_order_modulation and has_other)):
                reason = f"mmea with these options has nothing to modulate on outputs {spec.irreps_out}"
                if spec.keeps_zero:
                    reason += " (the layer must map zero to zero, so its 0e outputs get no shift)"
        return reason

    def __init__(self, spec: LayerSpec, config: MmeaConfig) -> None:
        super().__init__(spec, config)
        self.input_dependent = True
        self.invariants = InvariantReader(spec)
        index, n_gains = _gain_columns(spec, config)
        self.scale = None
        if config.higher_order_modulation and n_gains > 0:
            self.scale = nn.Linear(config.rank, n_gains)
            nn.init.zeros_(self.scale.weight)
            nn.init.zeros_(self.scale.bias)
            self.register_buffer("gain_index", index, persistent=False)
        self.shift = None
        if config.scalar_modulation and spec.num_shiftable_out() > 0:
            self.shift = nn.Linear(config.rank, spec.num_shiftable_out())
            nn.init.zeros_(self.shift.bias)
            if config.init == "identity":
                nn.init.zeros_(self.shift.weight)
            elif config.shift_init_std is not None:
                nn.init.normal_(self.shift.weight, std=config.shift_init_std)
            self.register_buffer("shift_index", spec.scalar_component_index(), persistent=False)
        both = self.scale is not None and self.shift is not None
        n_heads = 2 if config.heads == "separate" and both else 1
        self.heads = nn.ModuleList(_head(self.invariants.width, config.rank) for _ in range(n_heads))
        self.act = nn.SiLU() if config.activation == "silu" else nn.Identity()
        self.exp_gain = config.gain == "exp"

    def _phi(self, gamma: torch.Tensor) -> torch.Tensor:
        return torch.exp(gamma) if self.exp_gain else 1.0 + gamma

    def modulate(self, y: torch.Tensor, operands: list[torch.Tensor]) -> torch.Tensor:
        x0 = self.invariants(operands)
        hidden: list[torch.Tensor] = []
        for head in self.heads:
            hidden.append(self.act(head(x0)))
        if self.scale is not None:
            gains = self._phi(self.scale(hidden[0]))
            gains = torch.cat([gains, torch.ones_like(gains[..., :1])], dim=-1)
            y = y * gains.index_select(-1, self.gain_index)
        if self.shift is not None:
            shift = self.shift(hidden[-1])
            y = y.index_add(-1, self.shift_index, shift.expand(y.shape[:-1] + shift.shape[-1:]))
        return y
