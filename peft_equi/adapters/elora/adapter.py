"""ELoRA (ICML 2025): per-path low-rank weight updates (exactly mergeable).

For every weighted path ``k`` with weight block ``W_k`` seen as a matrix
``(fan_in, mul_out)`` (``(mul_in, mul_out)`` for linears, ``(mul_1 mul_2, mul_out)`` for
``uvw`` tensor-product paths, ``(in, out)`` for dense layers, ``(n_elements n_paths,
channels)`` for MACE's symmetric contractions):

.. math:: W_k \\leftarrow W_k + \\frac{\\alpha}{r} A_k B_k, \\qquad A_k \\in \\mathbb{R}^{fan_{in} \\times r},
   \\; B_k \\in \\mathbb{R}^{r \\times mul_{out}}

added to the raw weight, before the layer's path normalisation.  Each path's output is
equivariant for any value of its weight block, so the update is equivariant.

``A`` starts ``N(0, init_std^2)`` and ``B`` at zero (the update is zero at initialisation).
With ``init_per_coupling_path`` the ``A`` of a MACE contraction path ``(n_elements, P,
channels)`` starts with std ``init_std / P`` instead, as the reference code of the ELoRA and
MMEA papers inits ``weights_max`` (``randn(E, P, r) / P``).

Paths selected by ``full_paths`` get a full-rank update ``W_k + D_k`` (``D_k`` zero at
initialisation) instead: the same as training those weights fully, but expressed as a
mergeable update that carries over between backends.

With ``simplify_inputs`` the paths of a linear layer from consecutive input blocks of the
same irrep into one output block (``128x0e+128x0e -> 128x0e``) share one update: their
blocks, stacked, form the single path of the simplified layer (``256x0e -> 128x0e``), and
``A`` has ``sum fan_in`` rows.  Path weights are equal within such a group (they depend on
the output block only), so this is exactly ELoRA on the simplified layer.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.adapters.elora.config import EloraConfig
from peft_equi.adapters.lowrank import (
    assemble,
    coupling_paths,
    down_factor,
    scaling,
    selected_paths,
    unselected_reason,
    up_factor,
)
from peft_equi.core.adapter import Adapter, KeyedParameters
from peft_equi.core.registry import register_adapter
from peft_equi.core.spec import LayerKind, LayerSpec


def _groups(spec: LayerSpec, selected: list[bool], simplify: bool) -> list[list[int]]:
    """Path indices that share one low-rank update (singletons unless ``simplify``)."""
    if not (simplify and spec.kind is LayerKind.LINEAR):
        return [[i] for i, keep in enumerate(selected) if keep]
    run, runs = -1, []
    for i, block in spec.irreps_in[0].blocks():
        if i == 0 or block.ir != spec.irreps_in[0][i - 1].ir:
            run += 1
        runs.append(run)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, path in enumerate(spec.paths):
        if selected[i]:
            groups.setdefault((path.output, runs[path.inputs[0]]), []).append(i)
    return list(groups.values())


@register_adapter
class EloraAdapter(Adapter):
    """ELoRA: an independent low-rank update of every weighted path (mergeable).

    Parameters ``elora_A.{g}`` ``(fan_in, r)`` and ``elora_B.{g}`` ``(r, mul_out)`` per group of paths.
    """

    name = "elora"
    config_class = EloraConfig

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: EloraConfig) -> str | None:
        return unselected_reason(spec, config.paths) or super().unsupported_reason(spec, config)

    def __init__(self, spec: LayerSpec, config: EloraConfig) -> None:
        super().__init__(spec, config)
        self.scaling = scaling(config.rank, config.alpha)
        full = selected_paths(spec, config.full_paths) if config.full_paths is not None else [False] * len(spec.paths)
        lowrank = [keep and not dense for keep, dense in zip(selected_paths(spec, config.paths), full)]
        # full-rank updates of whole path blocks (zero at init): "train these weights fully", as a mergeable delta
        self.elora_full = KeyedParameters(
            {str(i): nn.Parameter(torch.zeros(p.fan_in, p.mul_out)) for i, p in enumerate(spec.paths) if full[i]}
        )
        self.groups = _groups(spec, lowrank, config.simplify_inputs)
        self.elora_A = nn.ParameterList()
        self.elora_B = nn.ParameterList()
        for group in self.groups:
            fan_in = sum(spec.paths[i].fan_in for i in group)
            self.elora_A.append(down_factor(fan_in, config.rank, self._init_std(spec, group)))
            self.elora_B.append(up_factor(config.rank, spec.paths[group[0]].mul_out))
        # delta_weight's plan (plain lists, for TorchScript): its blocks are the full-rank updates, then each
        # group's rows split by path; sources[k] is path k's block (-1: zero)
        self.group_fan_ins = [[spec.paths[i].fan_in for i in group] for group in self.groups]
        full_paths = [int(key) for key in self.elora_full.keys()]  # noqa: SIM118  (iterating yields the values)
        order = full_paths + [i for group in self.groups for i in group]
        self.sources = [order.index(k) if k in order else -1 for k in range(len(spec.paths))]
        self.numels = [path.numel for path in spec.paths]

    def _init_std(self, spec: LayerSpec, group: list[int]) -> float:
        """Std of ``A``: ``init_std``, divided by the coupling paths ``P`` of a contraction path if asked."""
        n_paths = coupling_paths(spec, spec.paths[group[0]]) if self.config.init_per_coupling_path else None
        return self.config.init_std / n_paths if n_paths else self.config.init_std

    def delta_weight(self) -> torch.Tensor | None:
        blocks: list[torch.Tensor] = [d for d in self.elora_full]
        for g, (a, b) in enumerate(zip(self.elora_A, self.elora_B)):
            blocks.extend(torch.split(self.scaling * (a @ b), self.group_fan_ins[g]))
        return assemble(blocks, self.sources, self.numels)
