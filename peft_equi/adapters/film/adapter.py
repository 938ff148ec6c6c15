"""FiLM for equivariant features: bounded invariant gains per ``(l, channel)``, shifts on ``0e``."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.adapters.film.config import FilmConfig
from peft_equi.core.adapter import Adapter, InvariantReader
from peft_equi.core.registry import register_adapter
from peft_equi.core.spec import LayerSpec


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _selected_operands(spec: LayerSpec, config: FilmConfig) -> tuple[int, ...]:
    return tuple(range(len(spec.irreps_in))) if config.operands is None else tuple(sorted(config.operands))


@register_adapter
class FilmAdapter(Adapter):
    """FiLM: bounded per-channel gains and ``0e`` shifts from a low-rank invariant gate.

    For a layer with ``N`` output channels (``N_0e`` of them ``0e``) and conditioning vector
    ``z`` (the ``m`` ``0e`` channels of the layer's operands, or of the operands listed in
    ``operands``), ``conditioning='input'`` computes

    .. math::
        h = \\mathrm{SiLU}(W_h z + b_h) \\in \\mathbb{R}^r, \\qquad
        \\gamma = W_\\gamma h + b_\\gamma \\in \\mathbb{R}^N, \\qquad
        \\beta = W_\\beta h + b_\\beta \\in \\mathbb{R}^{N_{0e}}

        y_{c,\\mu} \\leftarrow \\varphi(\\gamma_c)\\, y_{c,\\mu} \\;(\\text{every channel}), \\qquad
        y_c \\leftarrow y_c + \\beta_c \\;(c \\in 0e)

    with the bounded gain ``phi(gamma) = exp(lambda tanh gamma)`` (``gain='exp'``, amplitude
    ``lambda = ln max_gain``, so ``phi`` lies in ``[1/max_gain, max_gain]``) or
    ``phi(gamma) = 1 + lambda tanh gamma`` (``gain='one_plus'``, ``lambda = max_gain - 1``,
    ``phi`` in ``[2 - max_gain, max_gain]``).  Words, as MMEA's: ``h`` is the *gate* (module
    ``head``), ``phi(gamma)`` the *gains*, ``beta`` the *shifts*, ``W_gamma, b_gamma`` and
    ``W_beta, b_beta`` the *gain map* and *shift map* (modules ``gamma`` and ``beta``).
    Parameters: ``(m + 1) r + (r + 1)(N + N_0e)`` (``N_0e`` only with ``shift``, and ``0``
    in a layer that must map zero to zero, ``LayerSpec.keeps_zero``: radial networks get gains
    only, so their output still vanishes at the cutoff).  Bounded
    gains cannot blow up however far training pushes ``gamma``, which keeps deep stacks of
    adapted layers stable; the rank-``r`` gate keeps the count near MMEA's.

    ``conditioning='static'``: ``gamma`` and ``beta`` are learned constants (``N + N_0e``
    parameters), applied through :meth:`output_affine`, i.e. folded into the layer's weight
    and bias: mergeable.

    ``W_gamma, b_gamma, W_beta, b_beta`` (static: ``gamma, beta``) start at zero, so
    ``phi = 1`` and ``beta = 0`` exactly: the layer is unchanged at initialisation.
    Equivariance: ``z`` holds ``0e`` channels only (``0o`` flips sign under inversion), so
    ``h``, ``phi`` and ``beta`` are invariant; each gain is shared by the ``2l + 1``
    components of a channel and commutes with the Wigner matrices; shifts touch ``0e`` only.
    """

    name = "film"
    config_class = FilmConfig

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: FilmConfig) -> str | None:
        reason = super().unsupported_reason(spec, config)
        if reason is not None or config.conditioning != "input":
            return reason
        n_operands = len(spec.irreps_in)
        missing = [i for i in config.operands or () if i >= n_operands]
        if missing:
            return f"film: operands {missing} do not exist (the layer has {n_operands} operand(s))"
        operands = _selected_operands(spec, config)
        if sum(len(spec.invariant_input_index(i)) for i in operands) == 0:
            inputs = " x ".join(str(spec.irreps_in[i]) for i in operands)
            return (
                f"film reads the 0e channels of the layer's operand(s) {list(operands)}, but they have none "
                f"({inputs}); exclude the layer, choose other operands or set conditioning='static'"
            )
        return None

    def __init__(self, spec: LayerSpec, config: FilmConfig) -> None:
        super().__init__(spec, config)
        n_gamma, n_beta = spec.num_channels_out, spec.num_shiftable_out() if config.shift else 0
        self.gain_amplitude = config.gain_amplitude
        self.exp_gain = config.gain == "exp"
        self.input_dependent = config.conditioning == "input"
        if self.input_dependent:
            self.invariants = InvariantReader(spec, _selected_operands(spec, config))
            self.head = nn.Linear(self.invariants.width, config.rank)  # PyTorch's default init
            self.act = nn.SiLU()
            self.gamma = _zero_linear(config.rank, n_gamma)
            self.beta = _zero_linear(config.rank, n_beta) if n_beta else None
            self.register_buffer("gamma_index", spec.component_channel_index(), persistent=False)
            self.register_buffer("beta_index", spec.scalar_component_index(), persistent=False)
        else:
            self.gamma = nn.Parameter(torch.zeros(n_gamma))
            self.beta = nn.Parameter(torch.zeros(n_beta)) if n_beta else None

    def _phi(self, gamma: torch.Tensor) -> torch.Tensor:
        """The bounded gain; exactly 1 at ``gamma = 0``."""
        t = torch.tanh(gamma) * self.gain_amplitude
        return torch.exp(t) if self.exp_gain else 1.0 + t

    def output_affine(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.input_dependent:
            return None, None
        return self._phi(self.gamma), self.beta

    def modulate(self, y: torch.Tensor, operands: list[torch.Tensor]) -> torch.Tensor:
        h = self.act(self.head(self.invariants(operands)))
        y = y * self._phi(self.gamma(h)).index_select(-1, self.gamma_index)
        if self.beta is not None:
            beta = self.beta(h)
            y = y.index_add(-1, self.beta_index, beta.expand(y.shape[:-1] + beta.shape[-1:]))
        return y
