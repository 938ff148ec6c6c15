"""The adapter interface, written against :class:`~peft_equi.spec.LayerSpec` only.

An adapter changes one layer ``y = f(x; W, b)`` in up to three ways, each optional:

1. **weight update** :meth:`Adapter.delta_weight`: ``W -> W + dW`` in the canonical flat
   layout (per-path blocks), added before the layer's path normalisation;
2. **static output affine** :meth:`Adapter.output_affine`: ``y -> g * y + s`` with one
   gain ``g`` per output channel (shared by the ``2l+1`` components) and a shift ``s`` on
   ``0e`` channels only; folded into the weight and bias, so it costs nothing extra;
3. **input-dependent modulation** :meth:`Adapter.modulate` (``dynamic = True``): any map
   of the output and the layer's operands, e.g. gains computed from invariant features.

(1) and (2) are mergeable into the layer.  All three are equivariant when the adapter
respects the block structure of the spec: per-path weight blocks, per-channel gains
computed from invariants, shifts on ``0e`` only.  Adapters never import a backend library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from peft_equi.spec import LayerKind, LayerSpec


class AdapterConfig(BaseModel):
    """Options of an adapter (pydantic model; unknown options are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Adapter(nn.Module):
    """Base class of adapters.  Subclasses set ``name``, ``config_class`` and override hooks."""

    name: ClassVar[str]
    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig
    #: ``False`` marks adapters that break equivariance on purpose (ablations); they warn.
    equivariant: ClassVar[bool] = True
    #: Layer kinds the adapter supports.
    kinds: ClassVar[frozenset[LayerKind]] = frozenset(LayerKind)

    def __init__(self, spec: LayerSpec, config: AdapterConfig) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        #: True when :meth:`modulate` must run (the update depends on the input).
        self.dynamic = False
        #: True when the layer's own bias parameters are unfrozen too (BitFit).
        self.trains_layer_bias = False

    @classmethod
    def unsupported_reason(cls, spec: LayerSpec, config: AdapterConfig) -> str | None:
        """Why the adapter cannot act on a layer of this spec, or ``None`` when it can."""
        if spec.kind not in cls.kinds:
            kinds = ", ".join(sorted(k.value for k in cls.kinds))
            return f"{cls.name} adapts only {kinds} layers, not {spec.kind.value}"
        return None

    def delta_weight(self) -> torch.Tensor | None:
        """Additive update of the canonical flat weight, or ``None``."""
        return None

    def output_affine(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Static ``(gain per output channel, shift per 0e output channel)``; ``None`` = none."""
        return None, None

    def modulate(self, y: torch.Tensor, operands: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Input-dependent change of the output (only called when ``self.dynamic``)."""
        return y

    def merge_blocker(self) -> str | None:
        """Why this adapter cannot be merged into its layer, or ``None``."""
        if self.dynamic:
            return f"{self.name} is not mergeable: its update depends on the layer's input"
        return None

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, {self.config!r}"


class InvariantReader(nn.Module):
    """Reads the ``0e`` channels of a layer's operands: ``x0 = concat_i x_i[..., 0e]``.

    These invariant features are what gates and conditioning may depend on without
    breaking equivariance (``0o`` channels flip sign under inversion and are excluded).
    ``operands``: which operands to read, in this order (default: all); leading dimensions
    are broadcast.
    """

    def __init__(self, spec: LayerSpec, operands: Sequence[int] | None = None) -> None:
        super().__init__()
        self.operands = tuple(range(len(spec.irreps_in))) if operands is None else tuple(operands)
        self.width = 0
        for i in self.operands:
            index = spec.invariant_input_index(i)
            self.register_buffer(f"index{i}", index, persistent=False)
            self.width += len(index)

    def forward(self, operands: tuple[torch.Tensor, ...]) -> torch.Tensor:
        parts = [operands[i].index_select(-1, getattr(self, f"index{i}")) for i in self.operands]
        if len(parts) == 1:
            return parts[0]
        leading = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
        return torch.cat([p.expand(*leading, p.shape[-1]) for p in parts], dim=-1)


def no_invariant_input_reason(name: str, spec: LayerSpec, option: str) -> str | None:
    """The shared message for gate-based adapters on layers without ``0e`` inputs."""
    if spec.num_invariant_in() > 0:
        return None
    return (
        f"{name} reads the layer's 0e input channels, but this layer has none "
        f"(inputs {' x '.join(str(i) for i in spec.irreps_in)}); exclude the layer or set {option}"
    )


def validated_config(cls: type[Adapter], options: dict[str, Any] | AdapterConfig) -> AdapterConfig:
    """Validate ``options`` into ``cls.config_class`` (pydantic errors name the bad option)."""
    if isinstance(options, cls.config_class):
        return options
    if isinstance(options, AdapterConfig):
        options = options.model_dump()
    return cls.config_class.model_validate(options)
