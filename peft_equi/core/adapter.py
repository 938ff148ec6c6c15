"""The adapter interface, written against :class:`~peft_equi.core.spec.LayerSpec` only.

An adapter changes one layer ``y = f(x; W, b)`` in up to three ways, each optional:

1. **weight update** :meth:`Adapter.delta_weight`: ``W -> W + dW`` in the canonical flat
   layout (per-path blocks), added before the layer's path normalisation;
2. **static output affine** :meth:`Adapter.output_affine`: ``y -> g * y + s`` with one
   gain ``g`` per output channel (shared by the ``2l+1`` components) and a shift ``s`` on
   ``0e`` channels only; folded into the weight and bias, so it costs nothing extra;
3. **input-dependent modulation** :meth:`Adapter.modulate` (``input_dependent = True``): any map
   of the output and the layer's operands, e.g. gains computed from invariant features.

(1) and (2) are mergeable into the layer.  All three are equivariant when the adapter
respects the block structure of the spec: per-path weight blocks, per-channel gains
computed from invariants, shifts on ``0e`` only.  Adapters never import a backend library.

The three hooks run inside the adapted layer's ``forward``, so they are written in
TorchScript-compatible code (adapted models compile with ``torch.jit.script`` / e3nn's
``jit.compile``): index maps precomputed in ``__init__`` as buffers or plain int/float/bool
lists, no ``LayerSpec`` or config object at call time.  ``input_dependent`` is a TorchScript
constant, so a static adapter's ``modulate`` is never compiled, and a branch on it is
resolved when the model is compiled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from peft_equi.core.spec import LayerKind, LayerSpec


class AdapterConfig(BaseModel):
    """Options of an adapter (pydantic model; unknown options and non-finite numbers are rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Adapter(nn.Module):
    """Base class of adapters.  Subclasses set ``name``, ``config_class`` and override hooks."""

    name: ClassVar[str]
    config_class: ClassVar[type[AdapterConfig]] = AdapterConfig
    #: ``False`` marks adapters that break equivariance on purpose (ablations); they warn.
    equivariant: ClassVar[bool] = True
    #: Layer kinds the adapter supports.
    kinds: ClassVar[frozenset[LayerKind]] = frozenset(LayerKind)
    # TorchScript: ``input_dependent`` is a compile-time constant (branches on it are resolved), and
    # the spec and config are Python objects the hooks do not use at call time
    __constants__ = ("input_dependent",)
    __jit_ignored_attributes__ = ("spec", "config")

    def __init__(self, spec: LayerSpec, config: AdapterConfig) -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        #: True when :meth:`modulate` must run (the update depends on the input).
        self.input_dependent = False
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

    def modulate(self, y: torch.Tensor, operands: list[torch.Tensor]) -> torch.Tensor:
        """Input-dependent change of the output (only called when ``self.input_dependent``).

        ``operands``: the layer's feature operands, flat, in ``spec.irreps_in`` order and ``spec.layout``.
        """
        return y

    def needs_invariant_features(self) -> str | None:
        """What this adapter does that is equivariant on invariant (``0e``) features only, or ``None``.

        Reading the layer's input (``input_dependent``), training its bias or adding a constant
        (a shift in :meth:`output_affine`) needs invariant features; a weight update and
        per-channel gains do not (they act alike on every component of a channel).  On a
        layer whose features are not known (``spec.irreps_known`` false: a dense layer no
        backend proves invariant and no config declares so) such an adapter is refused.
        """
        if self.input_dependent:
            return "reads the layer's input"
        if self.output_affine()[1] is not None:
            return "adds a constant to the layer's outputs"
        if self.trains_layer_bias:
            return "trains the layer's bias (a constant added to its outputs)"
        return None

    def merge_blocker(self) -> str | None:
        """Why this adapter cannot be merged into its layer, or ``None``."""
        if self.input_dependent:
            return f"{self.name} is not mergeable: its update depends on the layer's input"
        return None

    def extra_repr(self) -> str:
        return f"{self.spec.summary()}, {self.config!r}"


class KeyedParameters(nn.ParameterList):
    """Parameters under string keys, as in ``nn.ParameterDict`` (the same state-dict keys
    ``<name>.<key>``), that TorchScript can iterate: it sees a ``ParameterList``, whose
    iteration yields the parameters in insertion order (a ``ParameterDict`` cannot be iterated
    in TorchScript).

    Eager use: ``table[key]``, ``table[key] = tensor``, ``key in table``, ``keys()``,
    ``values()``, ``items()``, ``len(table)``; iterating yields the values, as in TorchScript.
    """

    def __init__(self, values: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self._keys: list[str] = []
        for key, value in (values or {}).items():
            self[key] = value

    def __getitem__(self, key: str | int) -> nn.Parameter:
        return self._parameters[self._keys[key] if isinstance(key, int) else key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        if not isinstance(key, str):
            raise TypeError(f"KeyedParameters keys are strings, not {type(key).__name__}")
        if key not in self._keys:
            self._keys.append(key)
            self._size += 1
        self.register_parameter(key, value if isinstance(value, nn.Parameter) else nn.Parameter(value))

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[nn.Parameter]:
        return iter(self.values())

    def __dir__(self) -> list[str]:
        return [key for key in super().__dir__() if key not in self._keys]

    def keys(self) -> list[str]:
        return list(self._keys)

    def values(self) -> list[nn.Parameter]:
        return [self._parameters[key] for key in self._keys]

    def items(self) -> list[tuple[str, nn.Parameter]]:
        return [(key, self._parameters[key]) for key in self._keys]

    def append(self, value: Any) -> KeyedParameters:
        raise TypeError("KeyedParameters: set a key (table[key] = value) instead of appending")

    def extra_repr(self) -> str:
        return "\n".join(f"  ({key}): Parameter of size {'x'.join(map(str, p.shape))}" for key, p in self.items())


class InvariantReader(nn.Module):
    """Reads the ``0e`` channels of a layer's operands: ``x0 = concat_i x_i[..., 0e]``.

    These invariant features are what gates and conditioning may depend on without
    breaking equivariance (``0o`` channels flip sign under inversion and are excluded).
    ``operands``: which operands to read, in this order (default: all); leading dimensions
    are broadcast.
    """

    def __init__(self, spec: LayerSpec, operands: Sequence[int] | None = None) -> None:
        super().__init__()
        self.operands = list(range(len(spec.irreps_in))) if operands is None else list(operands)
        self.width = 0
        # one index buffer per operand read, iterated in TorchScript as a ModuleList
        self.channels = nn.ModuleList(_OperandChannels(i, spec.invariant_input_index(i)) for i in self.operands)
        for reader in self.channels:
            self.width += len(reader.index)

    def forward(self, operands: list[torch.Tensor]) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for reader in self.channels:
            parts.append(reader.read(operands[reader.operand]))
        if len(parts) == 1:
            return parts[0]
        leading = parts[0].shape[:-1]
        for part in parts[1:]:
            leading = torch.broadcast_shapes(leading, part.shape[:-1])
        return torch.cat([p.expand(leading + p.shape[-1:]) for p in parts], dim=-1)


class _OperandChannels(nn.Module):
    """The positions of operand ``operand``'s ``0e`` channels (a non-persistent buffer).

    When they form one contiguous range (``start``, ``length``; e3nn and MACE put the ``0e``
    block first), they are read with ``narrow``, whose backward copies a slice where
    ``index_select``'s scatters (a small saving: ``benchmarks/mmea_layer.py``).
    """

    def __init__(self, operand: int, index: torch.Tensor) -> None:
        super().__init__()
        self.operand = operand
        self.register_buffer("index", index, persistent=False)
        self._find_range()

    def _find_range(self) -> None:
        self.length = len(self.index)
        self.start = int(self.index[0]) if self.length else 0
        expected = torch.arange(self.start, self.start + self.length, device=self.index.device)
        self.contiguous = self.length > 0 and torch.equal(self.index, expected)

    def read(self, operand: torch.Tensor) -> torch.Tensor:
        """The ``0e`` channels of ``operand`` (last dimension)."""
        if self.contiguous:
            return operand.narrow(-1, self.start, self.length)
        return operand.index_select(-1, self.index)


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
