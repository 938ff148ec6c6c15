"""Backend-free description of an equivariant layer with weights.

Every layer peft-equi adapts is described by a :class:`LayerSpec`: the irreps of its
operands and output, the layout of its features, and its *paths*.  A path ``k`` connects
one block of each operand to one output block and owns a contiguous block of the layer's
flat weight vector, of shape ``path.shape`` (row-major), whose **last axis indexes the
output block's channels**.  The layer computes

.. math::  y_j = \\sum_{k \\to j} c_k \\, \\mathrm{op}_k(x; W_k) \\; (+\\, b_j \\text{ on } 0e \\text{ blocks})

where ``c_k`` is ``path.path_weight`` (the backend's path normalisation) and ``op_k`` is
equivariant for any value of the weight block ``W_k``.  Hence any change of the weight that
keeps this block structure - a low-rank update of one block, scaling of output channels -
keeps the layer equivariant.  This is the contract adapters are written against:

* ``linear``: one operand; ``W_k`` has shape ``(mul_in, mul_out)`` (e3nn ``o3.Linear``,
  ``cuet.Linear``).
* ``tensor_product``: two operands; ``W_k`` has shape ``(mul_1, mul_2, mul_out)`` for
  ``uvw`` paths (e3nn ``FullyConnectedTensorProduct``).
* ``dense``: ``in -> out`` channels mixed by one ``(in, out)`` path, written ``in x 0e ->
  out x 0e`` (``torch.nn.Linear``, e3nn ``FullyConnectedNet`` layers).  Such a module does
  not say what its features are: mixing the channels of the last axis is equivariant on
  features of any irreps (``(atoms, 3, channels)`` vectors included), so the ``0e`` labels
  are channel counts only until the input is known to be invariant (``irreps_known``).
* ``contraction``: MACE's symmetric contraction; operands are node features and the
  one-hot element ``z``; one path per weight tensor ``(n_elements, n_coupling_paths,
  channels)`` (``weights_max`` and the lower-order ``weights.*`` of each output irrep).

Paths have a ``name`` (``"0->1"``, ``"weight"``, ``"contractions.0.weights_max"``) that
adapter options can select paths by.

Biases exist only on ``0e`` output blocks; ``bias_blocks`` lists the output blocks for
which the layer itself stores a bias (concatenated in that order).

``keeps_zero`` marks a layer that maps zero to zero and must keep doing so: a bias-free
dense layer such as a radial network (e3nn ``FullyConnectedNet`` in MACE and SevenNet,
``ScalarLinearLayer`` MLPs in NequIP), whose input is a radial basis times a cutoff
envelope, so that each edge's contribution vanishes smoothly at ``r_max``.  A constant added there (a BitFit bias, a
FiLM or MMEA shift) makes the energy jump whenever an atom crosses ``r_max`` (the measured jumps:
docs/adapters/index.md); adapters add only multiplicative or weight updates to such layers.

``irreps_known`` says whether the ``0e`` labels can be relied on.  Layers whose module
states its irreps (e3nn, cuequivariance, MACE's contraction) have it ``True``.  A dense
layer has it ``False`` as described (:func:`dense_spec`); discovery sets it ``True`` when
the backend proves the layer's input invariant in its model
(:meth:`~peft_equi.core.adapted_layer.AdaptedLayer.invariant_input`) or the config declares it
(``PeftConfig.invariant_inputs``).  On a layer whose features are not known, weight updates
and per-channel gains stay equivariant (they act on channels alike for every component);
reading the input or adding a constant does not, and is refused
(:meth:`~peft_equi.core.adapter.Adapter.needs_invariant_features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from peft_equi.core.irreps import Irrep, Irreps, Layout, MulIrrep


class LayerKind(str, Enum):
    """What kind of map a layer is (see the module docstring)."""

    LINEAR = "linear"
    TENSOR_PRODUCT = "tensor_product"
    DENSE = "dense"
    CONTRACTION = "contraction"


@dataclass(frozen=True)
class WeightPath:
    """One weighted path: operand blocks ``inputs`` -> output block ``output``."""

    inputs: tuple[int, ...]
    output: int
    shape: tuple[int, ...]
    offset: int
    path_weight: float = 1.0
    name: str = ""

    @property
    def numel(self) -> int:
        """Number of weights of the path."""
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        """Rows of the path weight seen as a matrix ``(prod(shape[:-1]), mul_out)``."""
        return math.prod(self.shape[:-1])

    @property
    def mul_out(self) -> int:
        """Channels of the output block (the last axis of the weight block)."""
        return self.shape[-1]

    def block(self, weight: torch.Tensor) -> torch.Tensor:
        """The path's weight block as a ``(fan_in, mul_out)`` matrix view of a flat weight."""
        return weight[..., self.offset : self.offset + self.numel].reshape(
            *weight.shape[:-1], self.fan_in, self.mul_out
        )


@dataclass(frozen=True)
class LayerSpec:
    """Backend-free description of one adaptable layer (see the module docstring)."""

    kind: LayerKind
    irreps_in: tuple[Irreps, ...]
    irreps_out: Irreps
    paths: tuple[WeightPath, ...]
    layout: Layout = Layout.MUL_IR
    bias_blocks: tuple[int, ...] = ()
    keeps_zero: bool = False
    irreps_known: bool = True

    def __post_init__(self) -> None:
        for i in self.bias_blocks:
            if not self.irreps_out[i].ir.is_invariant:
                raise ValueError(f"bias on output block {i} ({self.irreps_out[i]}): biases exist only on 0e")
        offset = 0
        for path in self.paths:
            if path.offset != offset:
                raise ValueError(
                    f"path {path.name or path} starts at {path.offset}, expected {offset}: paths must tile "
                    "the flat weight in order"
                )
            offset += path.numel
            if path.mul_out != self.irreps_out[path.output].mul:
                raise ValueError(f"path {path} does not end in output block {path.output}'s channels")

    @property
    def weight_numel(self) -> int:
        """Length of the flat weight vector."""
        return sum(p.numel for p in self.paths)

    @property
    def num_channels_out(self) -> int:
        """Number of output ``(l, channel)`` pairs: the sum of output multiplicities."""
        return self.irreps_out.num_channels

    def scalar_blocks(self) -> list[int]:
        """Indices of the ``0e`` output blocks (the only ones that may be shifted)."""
        return [i for i, block in self.irreps_out.blocks() if block.ir.is_invariant]

    def num_scalar_out(self) -> int:
        """Number of ``0e`` output channels."""
        return sum(self.irreps_out[i].mul for i in self.scalar_blocks())

    def num_shiftable_out(self) -> int:
        """Number of output channels an adapter may add a constant to: the ``0e`` ones, none if ``keeps_zero``."""
        return 0 if self.keeps_zero else self.num_scalar_out()

    def num_invariant_in(self) -> int:
        """Number of ``0e`` channels over all operands (what invariant gates can read)."""
        return sum(block.mul for irreps in self.irreps_in for block in irreps if block.ir.is_invariant)

    # -- index maps (torch tensors, built on demand; adapters keep them as buffers) --

    def component_channel_index(self) -> torch.Tensor:
        """For each output component, the index of its output channel (layout aware).

        A per-channel gain ``g`` (shape ``(..., num_channels_out)``) acts on features as
        ``y * g[..., index]``: shared by the ``2l + 1`` components of a channel, which
        commutes with the block-diagonal Wigner matrices, hence equivariant.
        """
        index = []
        for i, block in self.irreps_out.blocks():
            start = self.irreps_out.channel_offsets()[i]
            channels = torch.arange(start, start + block.mul)
            if self.layout is Layout.MUL_IR:
                index.append(channels.repeat_interleave(block.ir.dim))
            else:
                index.append(channels.repeat(block.ir.dim))
        return torch.cat(index) if index else torch.zeros(0, dtype=torch.long)

    def scalar_channel_index(self) -> torch.Tensor:
        """Output channel indices of the ``0e`` channels, in block order."""
        offsets = self.irreps_out.channel_offsets()
        return _cat_ranges((offsets[i], self.irreps_out[i].mul) for i in self.scalar_blocks())

    def scalar_component_index(self) -> torch.Tensor:
        """Positions of the ``0e`` output channels in the flat output vector."""
        offsets = self.irreps_out.offsets()
        return _cat_ranges((offsets[i], self.irreps_out[i].mul) for i in self.scalar_blocks())

    def invariant_input_index(self, operand: int) -> torch.Tensor:
        """Positions of the ``0e`` components in operand ``operand``'s flat features."""
        irreps = self.irreps_in[operand]
        offsets = irreps.offsets()
        return _cat_ranges((offsets[i], b.mul) for i, b in irreps.blocks() if b.ir.is_invariant)

    def weight_channel_index(self) -> torch.Tensor:
        """For each entry of the flat weight, the output channel it writes to."""
        offsets = self.irreps_out.channel_offsets()
        index = [torch.arange(offsets[p.output], offsets[p.output] + p.mul_out).repeat(p.fan_in) for p in self.paths]
        return torch.cat(index) if index else torch.zeros(0, dtype=torch.long)

    def bias_channel_index(self) -> torch.Tensor:
        """Output channel index of each entry of the layer's own bias vector."""
        offsets = self.irreps_out.channel_offsets()
        return _cat_ranges((offsets[i], self.irreps_out[i].mul) for i in self.bias_blocks)

    def summary(self) -> str:
        """One-line human-readable summary."""
        ins = " x ".join(str(irreps) for irreps in self.irreps_in)
        return f"{self.kind.value}: {ins} -> {self.irreps_out} [{self.layout.value}, {len(self.paths)} paths]"


def dense_spec(h_in: int, h_out: int, path_weight: float, *, bias: bool = False) -> LayerSpec:
    """Spec of a channel-mixing layer, ``h_in x 0e -> h_out x 0e``: one ``(in, out)`` path.

    A dense layer without a bias keeps zero (``keeps_zero``): radial networks are built so.
    Its features are not known (``irreps_known=False``) until discovery proves or the config
    declares its input invariant.
    """
    scalar = Irrep(0, 1)
    return LayerSpec(
        LayerKind.DENSE,
        (Irreps([MulIrrep(h_in, scalar)]),),
        Irreps([MulIrrep(h_out, scalar)]),
        (WeightPath((0,), 0, (h_in, h_out), 0, path_weight, name="weight"),),
        bias_blocks=(0,) if bias else (),
        keeps_zero=not bias,
        irreps_known=False,
    )


def _cat_ranges(ranges) -> torch.Tensor:
    parts = [torch.arange(start, start + length) for start, length in ranges]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
