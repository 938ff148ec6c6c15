"""What a :class:`~peft_equi.tuner.model.PeftModel` keeps beside its modules: :class:`TunerState`.

The adapters themselves live in the model's modules (each :class:`~peft_equi.core.adapted_layer.AdaptedLayer`
holds its adapters in the attributes it declares in ``adapter_layer_names``) and their configs in
``PeftModel.peft_config``; everything else the tuner needs to add, switch, delete, merge and unload
adapters is one :class:`TunerState`, created by ``PeftModel.__init__`` and changed only by ``PeftModel``'s
methods (those of its mixins :class:`~peft_equi.tuner.named_adapters.NamedAdapters` and
:class:`~peft_equi.tuner.merging.Merging` included).  Read it to inspect a model; do not change it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer

UNLOADED = "this PeftModel was merged or unloaded: use the model that call returned"


@dataclass(eq=False)
class TunerState:
    """The bookkeeping of one :class:`~peft_equi.tuner.model.PeftModel` (each field says who changes it)."""

    #: ``requires_grad`` of each base-model parameter before any adapter (set once; read by ``unload``).
    original_requires_grad: dict[str, bool]
    #: The active adapter's name (``None`` only while the first adapter is attached; ``set_adapter``).
    active: str | None = None
    #: Whether ``merge_and_unload``/``unload`` returned the plain model (then every method refuses).
    unloaded: bool = False
    #: Adapters that are frozen even when active: loaded with ``is_trainable=False`` (``set_trainable``).
    inference: set[str] = field(default_factory=set)
    #: Module path -> wrapper, every adapted layer of any adapter in model order (re-read after each change).
    layers: dict[str, AdaptedLayer] = field(default_factory=dict)
    #: Adapter -> the paths of the layers it adapts (``add_adapter``/``load_adapter``, ``delete_adapter``).
    adapter_paths: dict[str, list[str]] = field(default_factory=dict)
    #: Base tensor trained fully by any adapter -> ``(owner module, attribute)`` (attaching, ``delete_adapter``).
    trained: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    #: Adapter -> the base tensors it trains fully (``fully_trained``, ``fully_trained_buffers``, BitFit's biases).
    trained_names: dict[str, list[str]] = field(default_factory=dict)
    #: Trained buffers, made parameters while trained -> whether the buffer was persistent (restored on unload).
    trained_buffers: dict[str, bool] = field(default_factory=dict)
    #: Trained base tensor -> its value before any adapter (what an adapter that does not train it sees).
    base_values: dict[str, torch.Tensor | None] = field(default_factory=dict)
    #: Inactive adapter -> the values of the base tensors it trains (swapped in by ``set_adapter``).
    stash: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    #: Inside ``disable_adapter()``: layer path -> whether to switch its adapter on when the context ends.
    disabled_states: dict[str, bool] | None = None
    #: After ``merge_adapter()``: layer path -> its base layer's parameters before merging (``unmerge_adapter``).
    unmerged_values: dict[str, dict[str, torch.Tensor]] | None = None

    def live(self, name: str) -> torch.Tensor:
        """The model's own tensor of the fully trained base tensor ``name`` (holding the active adapter's value)."""
        owner, attr = self.trained[name]
        return getattr(owner, attr)

    def check_usable(self) -> None:
        """Refuse (``RuntimeError``) a change to a model that was unloaded or whose adapter is merged."""
        if self.unloaded:
            raise RuntimeError(UNLOADED)
        if self.unmerged_values is not None:
            raise RuntimeError("the active adapter is merged into the weights (merge_adapter): unmerge_adapter() first")

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``fn`` (``.to()``, ``.double()``, ...) to the stored tensor values, as to the model's own."""
        for values in [self.base_values, *self.stash.values(), *(self.unmerged_values or {}).values()]:
            for name, value in values.items():
                if value is not None:
                    values[name] = fn(value)

    # -- the base tensors trained fully (``fully_trained``, ``fully_trained_buffers``, BitFit's layer biases) --

    def add_trained(self, adapter_name: str, names: list[str], owners: dict[str, tuple[nn.Module, str]]) -> None:
        """Record that adapter ``adapter_name`` trains the base tensors ``names`` (``owners``: name -> ``(module,
        attribute)``); a buffer becomes a frozen parameter.  An adapter added beside the active one starts from
        the base values."""
        for name in names:
            if name in self.trained:
                continue
            owner, attr = owners[name]
            if attr in owner._buffers:  # a fully_trained_buffers buffer: trained as a parameter
                self.trained_buffers[name] = attr not in owner._non_persistent_buffers_set
                value = getattr(owner, attr)
                delattr(owner, attr)
                owner.register_parameter(attr, nn.Parameter(value.detach().clone(), requires_grad=False))
            self.trained[name] = (owner, attr)
            self.base_values[name] = getattr(owner, attr).detach().clone()
        self.trained_names[adapter_name] = names
        if self.active is not None:  # not the first adapter: its own values, from the base values
            self.stash[adapter_name] = {n: self.base_values[n].clone() for n in names}

    def remove_trained(self, adapter_name: str) -> None:
        """Forget the inactive adapter ``adapter_name``'s trained tensors: those no other adapter trains keep their
        current (base) values, frozen, and buffers become buffers again."""
        still = {n for name, names in self.trained_names.items() if name != adapter_name for n in names}
        for name in self.trained_names.pop(adapter_name):
            if name in still:
                continue
            owner, attr = self.trained.pop(name)
            self.base_values.pop(name)
            getattr(owner, attr).requires_grad_(False)
            if name in self.trained_buffers:
                to_buffer(owner, attr, self.trained_buffers.pop(name))
        self.stash.pop(adapter_name, None)

    def trained_values(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Name -> value of the base tensors adapter ``adapter_name`` trains: the model's own tensors (detached)
        for the active adapter, the stored ones for the others."""
        if adapter_name == self.active:
            return {name: self.live(name).detach() for name in self.trained_names[adapter_name]}
        return {name: self.stash[adapter_name][name] for name in self.trained_names[adapter_name]}

    def swap_trained(self, old: str | None, new: str | None) -> None:
        """Store the values of ``old``'s trained tensors, put in ``new``'s (``None``: the base values)."""
        if old == new:
            return
        old_names = self.trained_names[old] if old is not None else []
        new_names = self.trained_names[new] if new is not None else []
        with torch.no_grad():
            if old is not None:
                self.stash[old] = {n: self.live(n).detach().clone() for n in old_names}
            for name in old_names:
                if name not in new_names:
                    self.live(name).copy_(self.base_values[name])
            if new is not None:
                values = self.stash.pop(new)
                for name in new_names:
                    self.live(name).copy_(values[name])

    @contextlib.contextmanager
    def trained_values_of(self, adapter_name: str | None) -> Iterator[None]:
        """Context in which the fully trained tensors hold ``adapter_name``'s values (``None``: the base values)."""
        active = self.active
        self.swap_trained(active, adapter_name)
        try:
            yield
        finally:
            self.swap_trained(adapter_name, active)

    def restore_buffers(self) -> None:
        """Make the trained buffers buffers again (unloading)."""
        for name, persistent in self.trained_buffers.items():
            to_buffer(*self.trained[name], persistent)


def to_buffer(owner: nn.Module, attr: str, persistent: bool) -> None:
    """Make the parameter ``owner.attr`` (a trained buffer) a buffer again."""
    value = getattr(owner, attr).detach()
    delattr(owner, attr)
    owner.register_buffer(attr, value, persistent=persistent)
