"""The backend interface: translate one kind of real module into a :class:`LayerSpec`.

A backend knows one layer type of one library (``e3nn.linear``, ``torch.linear``, ...).
It recognises modules by duck typing, describes them backend-free, and runs them with an
*effective* weight and bias supplied by peft-equi, so that weight-space adapters reach the
layer's own (possibly fused) kernel instead of running a second op beside it.

Running the layer is the job of the :class:`~peft_equi.core.adapted_layer.AdaptedLayer` subclass that
:meth:`Backend.adapted_layer_class` names: its ``forward`` has the layer's own fixed
signature and is TorchScript-compatible, so adapted models compile.  A backend without one
gets the generic :class:`~peft_equi.core.adapted_layer.AdaptedLayer` (``forward(*args, **kwargs)``,
eager only), which calls :meth:`Backend.operands`, :meth:`Backend.forward` and
:meth:`Backend.after_linear`.  The subclass also holds the layer's weight layout
(``layer_weight``, ``layer_bias``, ``write``): :meth:`Backend.weight`, :meth:`Backend.bias`
and :meth:`Backend.write` read it from there, so it is written once; a backend for the
generic wrapper implements those three itself.

Weights and biases cross this interface in the canonical layout of :mod:`peft_equi.core.spec`:
the flat concatenation of the path blocks, and the bias concatenated over
``spec.bias_blocks``.  Register a new backend with
:func:`peft_equi.core.registry.register_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from peft_equi.core.adapted_layer import AdaptedLayer, NoAdapter
from peft_equi.core.spec import LayerSpec


class Backend(ABC):
    """Adapter-facing view of one layer type.  Subclasses are stateless."""

    name: ClassVar[str]
    #: ``(package, class name)`` of the library class this backend adapts (``("e3nn", "Linear")``):
    #: a subclass that overrides its ``forward`` is refused (:meth:`refusal`), since the adapted
    #: layer runs the library class's own op and that code would be lost.
    layer_class: ClassVar[tuple[str, str] | None] = None

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is a layer of this type (duck typed); :meth:`refusal` may still refuse it."""

    def refusal(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot be adapted, or ``None``: ``inspect_model`` lists it as "not adaptable".

        Asked for every module the backend :meth:`matches` (the default refuses a subclass of
        :attr:`layer_class` that overrides ``forward``, a module with forward hooks and one
        whose parameters are parametrizations), and for weighted modules no backend matches
        (override to explain a variant of your type you do not support; the default says nothing).
        """
        if not self.matches(module):
            return None
        return common_refusal(module, self.layer_class)

    def invariant_input(self, module: nn.Module, ancestors: Sequence[nn.Module]) -> str | None:
        """For a layer described with ``irreps_known=False`` (a dense layer): why its input is
        invariant (``0e``) in this model, or ``None`` when that is not known (the default).

        ``ancestors``: the modules enclosing ``module``, from the model down to its parent.
        Proofs rest on the model's own structure (:mod:`peft_equi.core.invariance`); a proven
        layer may then get adapters that read its input or add constants, and refuses input of
        more than two dimensions at run time.
        """
        return None

    @abstractmethod
    def describe(self, module: nn.Module) -> LayerSpec:
        """The backend-free description of ``module``."""

    def weight(self, module: nn.Module) -> torch.Tensor:
        """The module's weight in canonical flat layout (a differentiable view if possible).

        Default: :meth:`AdaptedLayer.layer_weight` of the backend's TorchScript wrapper
        (:meth:`adapted_layer_class`), where the layout is written once; a backend without
        one overrides this.
        """
        return self.wrap(module).layer_weight()

    def bias(self, module: nn.Module) -> torch.Tensor | None:
        """The module's own bias over ``spec.bias_blocks``, or ``None``.

        Default: :meth:`AdaptedLayer.layer_bias` of the backend's TorchScript wrapper; without one, ``None``.
        """
        if self.adapted_layer_class(module) is AdaptedLayer:
            return None
        return self.wrap(module).layer_bias()

    def bias_parameter_names(self, module: nn.Module) -> list[str]:
        """Names (relative to the module) of the parameters that hold its bias."""
        return []

    def adapted_layer_class(self, module: nn.Module) -> type[AdaptedLayer]:
        """The :class:`AdaptedLayer` subclass that wraps ``module`` when it is adapted.

        A subclass overrides ``forward`` with the module's own signature (e.g.
        ``forward(self, x, y)``), and :meth:`AdaptedLayer.layer_weight` /
        :meth:`AdaptedLayer.layer_bias`, in TorchScript-compatible code.  The default, the
        generic :class:`AdaptedLayer`, runs :meth:`operands`, :meth:`forward` and
        :meth:`after_linear` instead: eager only.
        """
        return AdaptedLayer

    def operands(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The feature operands of a call, flat in ``spec.irreps_in`` order and ``spec.layout``.

        Used by the generic :class:`AdaptedLayer` only (see :meth:`adapted_layer_class`).
        """
        raise NotImplementedError(f"{type(self).__name__} implements no generic operands()")

    def forward(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run the layer's linear part with ``weight``/``bias`` (canonical) instead of its own.

        ``weight=None`` means the layer's own weight and bias (the fast path).  For layers
        with an output nonlinearity the result is the pre-activation; see :meth:`after_linear`.
        Used by the generic :class:`AdaptedLayer` only (see :meth:`adapted_layer_class`).
        """
        raise NotImplementedError(f"{type(self).__name__} implements no generic forward()")

    def after_linear(self, module: nn.Module, y: torch.Tensor) -> torch.Tensor:
        """Whatever the layer does after its linear part (activation, rescaling); generic wrapper only."""
        return y

    def write(self, module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Store canonical ``weight`` (and ``bias``) into the module in place (merging).

        Default: :meth:`AdaptedLayer.write` of the backend's TorchScript wrapper; a backend without one
        overrides this.
        """
        self.wrap(module).write(weight, bias)

    def wrap(self, module: nn.Module) -> AdaptedLayer:
        """``module`` in this backend's TorchScript wrapper with no adapter: its weight layout, for
        :meth:`weight`, :meth:`bias` and :meth:`write` (``module`` itself is not changed)."""
        cls = self.adapted_layer_class(module)
        if cls is AdaptedLayer:
            raise NotImplementedError(
                f"{type(self).__name__} gives its layers no TorchScript wrapper (adapted_layer_class), so it must "
                "implement weight(), bias() and write() itself"
            )
        spec = self.describe(module)
        return cls(module, self, spec, NoAdapter(spec))


class FlatWeightAdaptedLayer(AdaptedLayer):
    """The :class:`AdaptedLayer` of a layer whose ``weight``, flattened, is the canonical flat weight and
    that has no bias of its own (TorchScript-compatible; subclasses add the layer's ``forward``)."""

    def layer_weight(self) -> torch.Tensor:
        return self.base_layer.weight.reshape(-1)

    def layer_bias(self) -> torch.Tensor | None:
        return None

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        copy_into(self.base_layer.weight, weight)


class DenseBackend(Backend):
    """Shared parts of dense layers on invariant features with an optional ``bias`` Parameter,
    called as ``layer(input)``."""

    def bias_parameter_names(self, module: nn.Module) -> list[str]:
        return ["bias"] if module.bias is not None else []


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as messages name it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def library_base(cls: type, layer_class: tuple[str, str]) -> type | None:
    """The class called ``layer_class[1]`` from package ``layer_class[0]`` in ``cls``'s MRO (duck typed:
    the copy of a library inside a ``torch.package`` archive counts), or ``None``."""
    package, name = layer_class
    return next((c for c in cls.__mro__ if c.__name__ == name and package in c.__module__.split(".")), None)


def common_refusal(module: nn.Module, layer_class: tuple[str, str] | None) -> str | None:
    """Why a module a backend recognises cannot be adapted exactly, or ``None`` (see :meth:`Backend.refusal`)."""
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


def copy_into(target: torch.Tensor, value: torch.Tensor) -> None:
    """Overwrite ``target`` in place without recording autograd history."""
    with torch.no_grad():
        target.copy_(value.reshape(target.shape).to(target.dtype))
