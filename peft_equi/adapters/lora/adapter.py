"""Equivariant LoRA as a weight update (exactly mergeable).

On a linear layer, LoRA is the bottleneck ``y = W x + (alpha/r) B(A(x))`` where ``A`` maps
the input into ``r`` copies of every irrep shared by input and output and ``B`` maps back;
``A`` and ``B`` are themselves equivariant linears with e3nn's element normalisation (as in
``mace.modules.lora``).  Written in weight space, the update of path ``k: i -> j`` is

.. math:: \\Delta W_k = \\frac{\\alpha}{r}\\, \\frac{c^A_{ir}\\, c^B}{c_k}\\, A_i B_j,
   \\qquad c^A_{ir} = (\\textstyle\\sum_{i': ir_{i'} = ir} m_{i'})^{-1/2},\\; c^B = r^{-1/2}

with ``A_i (m_i, r)`` per input block, ``B_j (r, m_j)`` per output block and ``c_k`` the
layer's path weight; it equals the bottleneck on every path the layer has.  On tensor
products the factor ``A`` is indexed by (operand blocks, output irrep), ``(m_1 m_2, r)``,
and on dense layers (``nn.Linear``, MLP layers) LoRA is the plain ``W + (alpha/r) A B``;
there the update is added to the raw weight (``c = 1``).  Each ``A B`` only mixes channels
of one irrep, so the update keeps the path structure: equivariant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from peft_equi.adapters.lora.config import LoraConfig
from peft_equi.adapters.lowrank import assemble, down_factor, scaling, selected_paths, unselected_reason, up_factor
from peft_equi.core.adapter import Adapter, KeyedParameters
from peft_equi.core.registry import register_adapter
from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath

#: The adapter's two tables of factors (state-dict keys ``lora_A.<key>`` and ``lora_B.<key>``).
DOWN, UP = "lora_A", "lora_B"


def down_key(inputs: Sequence[int], ir: object) -> str:
    """The key of the factor ``A`` of the paths leaving input blocks ``inputs`` towards irrep ``ir``
    (linears and tensor products: such paths share it, the bottleneck has one block per irrep)."""
    return "_".join(str(i) for i in inputs) + f"_{ir}"


def path_key(index: int) -> str:
    """The key of the factor ``A`` of path ``index`` of a layer of another kind (its own)."""
    return f"p{index}"


def up_key(output: int) -> str:
    """The key of the factor ``B`` of output block ``output``."""
    return str(output)


def _a_key(spec: LayerSpec, index: int) -> str:
    path = spec.paths[index]
    if spec.kind in (LayerKind.LINEAR, LayerKind.TENSOR_PRODUCT):
        return down_key(path.inputs, spec.irreps_out[path.output].ir)
    return path_key(index)


@register_adapter
class LoraAdapter(Adapter):
    """Equivariant LoRA: a rank-r bottleneck of each shared irrep, as a weight update (mergeable)."""

    name = "lora"
    config_class = LoraConfig

    def __init__(self, spec: LayerSpec, config: LoraConfig) -> None:
        super().__init__(spec, config)
        self.scaling = scaling(config.rank, config.alpha)
        self.lora_A = KeyedParameters()
        self.lora_B = KeyedParameters()
        self.selected = [i for i, keep in enumerate(selected_paths(spec, config.paths)) if keep]
        for i in self.selected:
            path = spec.paths[i]
            key_a, key_b = _a_key(spec, i), up_key(path.output)
            if key_a not in self.lora_A:
                self.lora_A[key_a] = down_factor(path.fan_in, config.rank, config.init_std)
            if key_b not in self.lora_B:
                self.lora_B[key_b] = up_factor(config.rank, path.mul_out)
        # delta_weight's plan (plain lists, for TorchScript): selected path n uses lora_A[a_of[n]], lora_B[b_of[n]]
        keys_a, keys_b = self.lora_A.keys(), self.lora_B.keys()
        self.a_of = [keys_a.index(_a_key(spec, i)) for i in self.selected]
        self.b_of = [keys_b.index(up_key(spec.paths[i].output)) for i in self.selected]
        self.factors = [self.scaling * self._normalisation(spec, spec.paths[i]) for i in self.selected]
        self.sources = [self.selected.index(k) if k in self.selected else -1 for k in range(len(spec.paths))]
        self.numels = [path.numel for path in spec.paths]

    def _normalisation(self, spec: LayerSpec, path: WeightPath) -> float:
        if spec.kind is not LayerKind.LINEAR:
            return 1.0
        (irreps_in,) = spec.irreps_in
        ir = spec.irreps_out[path.output].ir
        fan_a = sum(block.mul for block in irreps_in if block.ir == ir)
        return 1.0 / math.sqrt(fan_a) / math.sqrt(self.config.rank) / path.path_weight

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: LoraConfig) -> str | None:
        return unselected_reason(spec, config.paths) or super().unsupported_reason(spec, config)

    def delta_weight(self) -> torch.Tensor | None:
        a = [p for p in self.lora_A]
        b = [p for p in self.lora_B]
        blocks: list[torch.Tensor] = []
        for n, factor in enumerate(self.factors):
            blocks.append(factor * a[self.a_of[n]] @ b[self.b_of[n]])
        return assemble(blocks, self.sources, self.numels)
