"""A backend: one class per layer type that describes the layer and runs it adapted.

A backend knows one layer type of one library (``e3nn.linear``, ``torch.linear``, ...).  It
is a subclass of :class:`AdaptedLayer`, registered with
:func:`~peft_equi.core.registry.register_backend`, with two sides:

* **describing** (classmethods, on modules that are not wrapped): :meth:`~AdaptedLayer.matches`
  recognises the layer type by duck typing, :meth:`~AdaptedLayer.refusal` says why a module of
  that type cannot be adapted, :meth:`~AdaptedLayer.describe` gives its backend-free
  :class:`~peft_equi.core.spec.LayerSpec`, :meth:`~AdaptedLayer.invariant_input` proves a dense
  layer's input invariant, :meth:`~AdaptedLayer.bias_parameter_names` names its bias;
* **running** (an instance: the module that replaces the adapted layer, ``base_layer`` + adapter,
  called like the base): ``forward`` with the layer's own fixed signature (``o3.Linear``:
  ``forward(features)``, tensor products: ``forward(x, y)``, ...) in TorchScript-compatible code,
  and the layer's weight layout, written once: :meth:`~AdaptedLayer.layer_weight`,
  :meth:`~AdaptedLayer.layer_bias` and :meth:`~AdaptedLayer.write`.  The canonical weight and
  bias of a module that is not wrapped (:meth:`~AdaptedLayer.weight_of`,
  :meth:`~AdaptedLayer.bias_of`) are read through the same methods, on the module wrapped with
  no adapter (:meth:`~AdaptedLayer.wrap`).

Weights and biases cross this interface in the canonical layout of :mod:`peft_equi.core.spec`:
the flat concatenation of the path blocks, and the bias concatenated over ``spec.bias_blocks``.

Forward pass, for base weight ``W``, bias ``b`` and an adapter with weight update ``dW``,
static gains ``g`` / ``0e`` shift ``s`` and input-dependent modulation ``M``:

.. math:: y = M\\big(f(x;\\; g \\odot (W + dW),\\; g \\odot b + s),\\; x\\big)

The effective weight and bias are computed once per call (cheap: weights are small next to
features, :meth:`AdaptedLayer.effective_parameters`) and passed to the layer's own op, so
weight-space adapters add no second feature-sized op.  A shift on a ``0e`` block that the layer
stores no bias for is added to the output instead, in the one tail every ``forward`` shares
(:meth:`AdaptedLayer.finish`, which also applies the modulation).  :meth:`AdaptedLayer.merge`
writes the same effective weight and bias.

**TorchScript.**  The built-in backends' ``forward`` methods and the adapters' hooks are
TorchScript-compatible, so adapted models compile with ``torch.jit.script`` and e3nn's
``jit.compile``; the describing classmethods are never compiled.  A backend that does not
override ``forward`` (a third-party layer type) gets the generic ``forward(*args, **kwargs)``,
eager only, through its Python hooks :meth:`AdaptedLayer.operands`,
:meth:`AdaptedLayer.run_linear` and :meth:`AdaptedLayer.after_linear`.

**Named adapters.**  ``adapter`` always holds the active adapter, so a layer with one
adapter has the state-dict keys ``<layer>.adapter.<param>`` and scripted forwards read
``self.adapter``; the layer's other named adapters wait in the ``nn.ModuleDict``
``other_adapters`` (so ``.to()`` moves them) and :meth:`AdaptedLayer.activate` swaps them.
A layer the active adapter does not adapt holds a :class:`NoAdapter` and is switched off
(``adapter_enabled = False``): it computes exactly its base layer.

**The wrapped module's attributes.**  Models read attributes of their layers (e3nn's example
networks read ``self.sc.output_mask``): attributes the wrapper does not have are read from
``base_layer`` (``irreps_in1``, ``irreps_out``, ``weight_numel``, ``instructions``, ...).
For TorchScript, which reads only what a module holds, the base layer's public buffers and
plain attributes are copied onto the wrapper when it is compiled (buffers as non-persistent
aliases of the same tensors, kept the same by ``.to()``).

**Invariant input at run time.**  An adapter that reads a dense layer's input or adds a
constant relies on the input being invariant, which discovery proved or the config declared
(:mod:`peft_equi.core.invariance`); the wrapper refuses input of more than two dimensions
then (:meth:`AdaptedLayer.check_input`): ``(atoms, 3, channels)`` vectors are not invariant.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from peft_equi.core.adapter import Adapter, AdapterConfig
from peft_equi.core.spec import LayerKind, LayerSpec
from peft_equi.errors import NotMergeableError


def _bias_scalar_positions(spec: LayerSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index maps between 0e channels and the layer's bias / its free output components.

    Returns (for each bias entry, its position among 0e channels; positions among 0e
    channels without a layer bias; their positions in the flat output).
    """
    in_bias, free, free_components = [], [], []
    offsets = spec.irreps_out.offsets()
    position = 0
    for i in spec.scalar_blocks():
        mul = spec.irreps_out[i].mul
        channels = torch.arange(position, position + mul)
        if i in spec.bias_blocks:
            in_bias.append((spec.bias_blocks.index(i), channels))
        else:
            free.append(channels)
            free_components.append(torch.arange(offsets[i], offsets[i] + mul))
        position += mul
    in_bias_t = torch.cat([c for _, c in sorted(in_bias, key=lambda t: t[0])]) if in_bias else _empty()
    return (
        in_bias_t,
        torch.cat(free) if free else _empty(),
        torch.cat(free_components) if free_components else _empty(),
    )


def _empty() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long)


class NoAdapter(Adapter):
    """The stand-in of the active adapter on a layer it does not adapt: changes nothing, has no parameters."""

    name = "none"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec, AdapterConfig())


class AdaptedLayer(nn.Module):
    """The base of every backend: describes one layer type (classmethods) and, as an instance, runs a layer of
    that type with adapters attached (see the module docstring).  ``base_layer`` keeps the original module.

    ``adapter`` is the active adapter, named ``active_adapter`` (``None``: a
    :class:`NoAdapter`, the active adapter of the model does not adapt this layer);
    ``other_adapters`` holds the layer's inactive named adapters.

    A backend sets :attr:`name` and overrides :meth:`matches` and :meth:`describe` (and, as its
    layer type needs, :meth:`refusal`, :meth:`invariant_input`, :meth:`bias_parameter_names`), and
    :meth:`layer_weight`, :meth:`layer_bias`, :meth:`write` and ``forward`` (TorchScript-compatible;
    :meth:`effective_parameters` and :meth:`finish` are shared and scriptable).
    """

    #: Registry name of the layer type (``"e3nn.linear"``): ``inspect_model`` and saved metadata show it.
    name: ClassVar[str]
    #: ``(package, class name)`` of the library class this backend adapts (``("e3nn", "Linear")``):
    #: a subclass that overrides its ``forward`` is refused (:meth:`refusal`), since the adapted
    #: layer runs the library class's own op and that code would be lost.
    layer_class: ClassVar[tuple[str, str] | None] = None

    #: The attributes that hold the layer's adapters, and so all its adapter state (peft's
    #: ``BaseTunerLayer.adapter_layer_names``): the active adapter and the inactive ones by name.  Everything
    #: else is ``base_layer`` or derived from the spec (non-persistent buffers); an adapter module keeps its own
    #: hyperparameters, so there is no ``other_param_names``.  :meth:`adapter_parameters` reads it.
    adapter_layer_names = ("adapter", "other_adapters")

    # Python objects TorchScript has no type for; the scripted methods do not use them
    __jit_ignored_attributes__ = ("spec", "active_adapter", "aliased_buffers")

    # -- describing a module of this type (classmethods; never compiled) --

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a layer of this type (duck typed); :meth:`refusal` may still refuse it."""
        raise NotImplementedError(f"backend {cls.__name__} implements no matches()")

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        """Why ``module`` cannot be adapted, or ``None``: ``inspect_model`` lists it as "not adaptable".

        Asked for every module the backend :meth:`matches` (the default refuses a subclass of
        :attr:`layer_class` that overrides ``forward``, a module with forward hooks and one
        whose parameters are parametrizations), and for weighted modules no backend matches
        (override to explain a variant of your type you do not support; the default says nothing).
        """
        if not cls.matches(module):
            return None
        return common_refusal(module, cls.layer_class)

    @classmethod
    def invariant_input(cls, module: nn.Module, ancestors: Sequence[nn.Module]) -> str | None:
        """For a layer described with ``irreps_known=False`` (a dense layer): why its input is
        invariant (``0e``) in this model, or ``None`` when that is not known (the default).

        ``ancestors``: the modules enclosing ``module``, from the model down to its parent.
        Proofs rest on the model's own structure (:mod:`peft_equi.core.invariance`); a proven
        layer may then get adapters that read its input or add constants, and refuses input of
        more than two dimensions at run time.
        """
        return None

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        """The backend-free description of ``module``."""
        raise NotImplementedError(f"backend {cls.__name__} implements no describe()")

    @classmethod
    def bias_parameter_names(cls, module: nn.Module) -> list[str]:
        """Names (relative to the module) of the parameters that hold its bias (BitFit unfreezes them)."""
        return []

    @classmethod
    def wrap(cls, module: nn.Module) -> AdaptedLayer:
        """``module`` wrapped with no adapter (``module`` itself is not changed): its weight layout, for
        :meth:`weight_of` and :meth:`bias_of`."""
        spec = cls.describe(module)
        return cls(module, spec, NoAdapter(spec))

    @classmethod
    def weight_of(cls, module: nn.Module) -> torch.Tensor:
        """The weight of ``module`` (not wrapped) in canonical flat layout: its :meth:`layer_weight`."""
        return cls.wrap(module).layer_weight()

    @classmethod
    def bias_of(cls, module: nn.Module) -> torch.Tensor | None:
        """The own bias of ``module`` (not wrapped) over ``spec.bias_blocks``, or ``None``: its :meth:`layer_bias`."""
        return cls.wrap(module).layer_bias()

    # -- running a layer of this type with adapters --

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter: Adapter) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter
        self.other_adapters = nn.ModuleDict()
        self.active_adapter: str | None = "default"
        self.spec = spec
        self.adapter_enabled = True
        bias_pos, free_pos, free_comp = _bias_scalar_positions(spec)
        self.register_buffer("weight_channel", spec.weight_channel_index(), persistent=False)
        self.register_buffer("bias_channel", spec.bias_channel_index(), persistent=False)
        self.register_buffer("bias_scalar_position", bias_pos, persistent=False)
        self.register_buffer("free_scalar_position", free_pos, persistent=False)
        self.register_buffer("free_scalar_component", free_comp, persistent=False)
        self.has_free_scalars = len(free_pos) > 0
        self.output_dim = spec.irreps_out.dim
        self.has_layer_bias = len(spec.bias_blocks) > 0
        self.aliased_buffers: list[str] = []
        self.layer_path = ""
        self.guard_input = False
        self.guard_message = ""
        self.refresh_guard()

    def __getattr__(self, name: str) -> Any:
        """Attributes the wrapper does not have are the base layer's (``output_mask``, ``irreps_out``, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "base_layer" or "base_layer" not in self._modules:
                raise
            return getattr(self._modules["base_layer"], name)

    def refresh_guard(self) -> None:
        """Set the run-time check of :meth:`check_input` for the active adapter (and ``layer_path``)."""
        what = self.adapter.needs_invariant_features()
        self.guard_input = self.spec.kind is LayerKind.DENSE and what is not None
        self.guard_message = (
            f"layer {self.layer_path!r} ({self.adapter.name}): the adapter {what} and so needs invariant (0e) "
            "input, but the input has a component axis (more than two dimensions, a middle one longer than 1), as "
            "vector or tensor features (atoms, components, channels) do; do not declare this layer in "
            "invariant_inputs (weight-space adapters such as lora act on any features)"
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Where the adapter needs invariant input (dense layers), refuse input of more than two dimensions
        with a middle axis longer than 1: a component axis (``(atoms, 1, channels)`` scalars, as PaiNN keeps
        them, pass)."""
        if self.guard_input and x.dim() > 2 and x.numel() != x.shape[0] * x.shape[-1]:
            raise RuntimeError(self.guard_message)

    def layer_weight(self) -> torch.Tensor:
        """The layer's weight in the canonical flat layout (a differentiable view if possible).

        With :meth:`layer_bias` and :meth:`write`, the one place a backend writes its layer's weight layout
        (TorchScript-compatible: the scripted ``forward`` reads it)."""
        raise NotImplementedError(f"backend {self.name} implements no layer_weight()")

    def layer_bias(self) -> torch.Tensor | None:
        """The layer's own bias over ``spec.bias_blocks``, or ``None`` (the default: no bias)."""
        return None

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Store the canonical ``weight`` (and ``bias``) into ``base_layer`` in place, in its own layout
        (merging; Python only).  :func:`overwrite` copies without autograd history."""
        raise NotImplementedError(f"backend {self.name} implements no write()")

    def effective_parameters(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(weight, bias, output shift)``; all ``None`` when the adapter leaves them alone."""
        delta = self.adapter.delta_weight()
        gain, shift = self.adapter.output_affine()
        if delta is None and gain is None and shift is None:
            return None, None, None
        weight = self.layer_weight()
        bias = self.layer_bias()
        if delta is not None:
            weight = weight + delta
        if gain is not None:
            weight = weight * gain.index_select(0, self.weight_channel)
            if bias is not None:
                bias = bias * gain.index_select(0, self.bias_channel)
        output_shift: torch.Tensor | None = None
        if shift is not None:
            if bias is not None:
                bias = bias + shift.index_select(0, self.bias_scalar_position)
            if self.has_free_scalars:
                output_shift = shift.new_zeros(self.output_dim).index_copy(
                    0, self.free_scalar_component, shift.index_select(0, self.free_scalar_position)
                )
        return weight, bias, output_shift

    def finish(self, y: torch.Tensor, output_shift: torch.Tensor | None, operands: list[torch.Tensor]) -> torch.Tensor:
        """The shared tail of every adapted ``forward``: ``y`` (the layer's op with the effective weight and
        bias) plus the shift on ``0e`` outputs the layer stores no bias for, then the adapter's modulation
        by the layer's ``operands`` (flat, in ``spec.irreps_in`` order; read only when it is input-dependent,
        so a forward may pass ``[]`` for a static adapter)."""
        if output_shift is not None:
            y = y + output_shift
        if self.adapter.input_dependent:
            y = self.adapter.modulate(y, operands)
        return y

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The generic ``forward`` of a backend that writes none of its own (eager only): its Python hooks
        :meth:`operands`, :meth:`run_linear` and :meth:`after_linear`."""
        if not self.adapter_enabled:
            return self.base_layer(*args, **kwargs)
        if self.guard_input:
            for operand in self.operands(args, kwargs):
                self.check_input(operand)
        weight, bias, output_shift = self.effective_parameters()
        y = self.run_linear(args, kwargs, weight, bias)
        operands = list(self.operands(args, kwargs)) if self.adapter.input_dependent else []
        return self.after_linear(self.finish(y, output_shift, operands))

    def operands(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The feature operands of a call, flat in ``spec.irreps_in`` order and ``spec.layout`` (generic
        ``forward`` only)."""
        raise NotImplementedError(f"backend {self.name} implements no operands() for the generic forward")

    def run_linear(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Run the layer's linear part with ``weight``/``bias`` (canonical) instead of its own (generic
        ``forward`` only).

        ``weight=None`` means the layer's own weight and bias (the fast path).  For layers with an
        output nonlinearity the result is the pre-activation; see :meth:`after_linear`.
        """
        raise NotImplementedError(f"backend {self.name} implements no run_linear() for the generic forward")

    def after_linear(self, y: torch.Tensor) -> torch.Tensor:
        """Whatever the layer does after its linear part (activation, rescaling); generic ``forward`` only."""
        return y

    # -- named adapters --

    def named_adapter(self, name: str) -> Adapter | None:
        """The adapter called ``name`` on this layer (active or not), or ``None``."""
        if name == self.active_adapter:
            return self.adapter
        return self.other_adapters[name] if name in self.other_adapters else None  # noqa: SIM401 - no ModuleDict.get

    def adapter_names(self) -> list[str]:
        """Names of the adapters this layer holds, the active one first."""
        return ([self.active_adapter] if self.active_adapter is not None else []) + list(self.other_adapters)

    def adapter_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of every adapter the layer holds, active or not (those under :attr:`adapter_layer_names`)."""
        for attr in self.adapter_layer_names:
            yield from getattr(self, attr).parameters()

    def add_named_adapter(self, name: str, adapter: Adapter) -> None:
        """Keep ``adapter`` as the inactive adapter ``name``."""
        if self.named_adapter(name) is not None:
            raise ValueError(f"this layer already has an adapter named {name!r}")
        self.other_adapters[name] = adapter

    def activate(self, name: str) -> None:
        """Make adapter ``name`` the active one (a :class:`NoAdapter`, switched off, when the layer has none)."""
        if name == self.active_adapter:
            return
        if self.active_adapter is not None:
            self.other_adapters[self.active_adapter] = self.adapter
        if name in self.other_adapters:
            self.adapter = self.other_adapters.pop(name)
            self.active_adapter = name
        else:
            self.adapter = NoAdapter(self.spec)
            self.active_adapter = None
        self.refresh_guard()

    def remove_named_adapter(self, name: str) -> Adapter:
        """Remove the inactive adapter ``name`` and return it."""
        return self.other_adapters.pop(name)

    def scripting_refusal(self) -> str | None:
        """Why this layer cannot be compiled with TorchScript, or ``None``: the generic ``forward`` cannot."""
        if type(self).forward is AdaptedLayer.forward:
            return (
                f"backend {self.name!r} gives its layers no TorchScript-compatible forward (see docs/extending.md), "
                "so this adapted layer cannot be scripted"
            )
        return None

    def __prepare_scriptable__(self) -> nn.Module:
        reason = self.scripting_refusal()
        if reason is not None:
            raise TypeError(f"{reason}; merge the adapters first (merge_and_unload) where they allow it")
        self._copy_base_attributes()
        return self

    def _copy_base_attributes(self) -> None:
        """Put the base layer's public buffers (aliases) and plain attributes on the wrapper, for TorchScript."""
        base = self.base_layer
        if not isinstance(base, torch.jit.ScriptModule):  # a compiled base layer keeps its attributes to itself
            for name, value in base.__dict__.items():
                if name.startswith("_") or name == "training" or callable(value) or self._has_own(name):
                    continue
                self.__dict__[name] = value
        for name, buffer in base.named_buffers(recurse=False):
            if not name.startswith("_") and not self._has_own(name):
                self._buffers[name] = buffer  # (register_buffer would find the base layer's through __getattr__)
                self._non_persistent_buffers_set.add(name)
                self.aliased_buffers.append(name)

    def _has_own(self, name: str) -> bool:
        return (
            hasattr(type(self), name)
            or name in self.__dict__
            or any(name in getattr(self, table) for table in ("_parameters", "_buffers", "_modules"))
        )

    def _apply(self, fn: Any, recurse: bool = True) -> AdaptedLayer:
        """``.to()`` and the like: the aliased buffers stay the base layer's own tensors."""
        super()._apply(fn, recurse)
        buffers = dict(self.base_layer.named_buffers(recurse=False))
        for name in self.aliased_buffers:
            self._buffers[name] = buffers[name]
        return self

    def merge_blocker(self) -> str | None:
        """Why this layer's adapter cannot be merged, or ``None``."""
        reason = self.adapter.merge_blocker()
        if reason is None and self.adapter.output_affine()[1] is not None and self.has_free_scalars:
            blocks = [str(i) for i in self.spec.scalar_blocks() if i not in self.spec.bias_blocks]
            reason = (
                f"{self.adapter.name} adds a bias to 0e output block(s) {', '.join(blocks)}, "
                "but the layer stores no bias there"
            )
        return reason

    def merge(self, name: str = "") -> nn.Module:
        """Write the adapted weight and bias into ``base_layer`` and return it."""
        reason = self.merge_blocker()
        if reason is not None:
            raise NotMergeableError(f"cannot merge layer {name or self.spec.summary()}: {reason}")
        weight, bias, _ = self.effective_parameters()
        if weight is not None:
            with torch.no_grad():
                self.write(weight.detach(), None if bias is None else bias.detach())
        return self.base_layer

    def extra_repr(self) -> str:
        return f"backend={self.name}, active={self.active_adapter}, enabled={self.adapter_enabled}"


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as messages name it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def library_base(cls: type, layer_class: tuple[str, str]) -> type | None:
    """The class called ``layer_class[1]`` from package ``layer_class[0]`` in ``cls``'s MRO (duck typed:
    the copy of a library inside a ``torch.package`` archive counts), or ``None``."""
    package, name = layer_class
    return next((c for c in cls.__mro__ if c.__name__ == name and package in c.__module__.split(".")), None)


def common_refusal(module: nn.Module, layer_class: tuple[str, str] | None) -> str | None:
    """Why a module a backend recognises cannot be adapted exactly, or ``None`` (see :meth:`AdaptedLayer.refusal`)."""
    cls = type(module)
    base = library_base(cls, layer_class) if layer_class is not None else None
    if base is not None and base is not cls and getattr(cls, "forward", None) is not getattr(base, "forward", None):
        return (
            f"{qualified_name(cls)} subclasses {layer_class[0]}'s {layer_class[1]} but overrides forward; the "
            f"adapted layer would run {layer_class[1]}'s own op instead, so that code would be lost"
        )
    if module._forward_hooks or module._forward_pre_hooks:
        return "it has forward hooks, which the adapted layer would not run"
    if parametrize.is_parametrized(module):
        return "its parameters are parametrizations (torch.nn.utils.parametrize), which merging could not write"
    return None


def overwrite(target: torch.Tensor, value: torch.Tensor) -> None:
    """Overwrite the tensor ``target`` (a parameter) in place with ``value``, without recording autograd history."""
    with torch.no_grad():
        target.copy_(value.reshape(target.shape).to(target.dtype))
