"""Several named adapters on one model, one active at a time: the part of :class:`~peft_equi.tuner.model.PeftModel`
that adds, switches and deletes them (peft's ``add_adapter`` / ``set_adapter`` / ``delete_adapter``).

Each :class:`AdaptedLayer` holds the active adapter in ``adapter`` and the others in
``other_adapters``; a layer the active adapter does not adapt computes its base layer.  Base
tensors trained fully (``PeftConfig.train``, ``train_buffers``, BitFit's layer biases) belong to
the adapter whose config trains them (as peft's ``modules_to_save``): the model holds the
active adapter's values, the others wait in a stash and :meth:`NamedAdapters.set_adapter`
swaps them in.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.adapter import AdapterConfig
from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import LayerPlan, assign, base_tensors, discover, select_tensors
from peft_equi.core.presets import resolve_config
from peft_equi.errors import ConfigError, UnknownNameError

DEFAULT_ADAPTER = "default"


def owner_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``(module, attribute)`` holding the tensor or submodule called ``name`` in ``model``."""
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def replace_module(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` at ``path`` (not empty) inside ``root``."""
    parent, attr = owner_of(root, path)
    setattr(parent, attr, new)


class NamedAdapters:
    """Mixin of :class:`~peft_equi.tuner.model.PeftModel`: its named adapters (state set up by its ``__init__``)."""

    @property
    def active_adapter(self) -> str:
        """The name of the active adapter."""
        assert self._active is not None
        return self._active

    @property
    def active_adapters(self) -> list[str]:
        """``[active_adapter]`` (peft's list form; one adapter is active at a time)."""
        return [self.active_adapter]

    def add_adapter(self, adapter_name: str, peft_config: PeftConfig | AdapterConfig | str, **options: Any) -> None:
        """Attach another adapter, called ``adapter_name``, without activating it (:meth:`set_adapter`).

        ``peft_config`` is given as to :func:`get_peft_model`: a :class:`PeftConfig`, an adapter's
        config (``EloraConfig(rank=8)``: that adapter on every layer it supports) or a preset or
        adapter name with ``options``.  It may adapt other layers than the adapters already there.
        Its fully trained base tensors start from the base values.  Everything is checked
        before the model is changed.
        """
        self._check_usable()
        check_name(adapter_name, self.peft_config)
        config = resolve_config(peft_config, **options)
        assignments = assign(discover(self.base_model), config)
        trained_tensor_names(self.base_model, config, assignments)  # validates the train patterns before any change
        self._inject(adapter_name, config, assignments)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter (trainable, unless loaded with ``is_trainable=False``)."""
        self._check_usable()
        self._check_known(adapter_name)
        self._activate(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name``; when it is the active one, the first remaining becomes active.

        Layers no remaining adapter adapts become their base layers again, and base tensors no
        remaining adapter trains get their base values (buffers become buffers again).
        """
        self._check_usable()
        self._check_known(adapter_name)
        if len(self.peft_config) == 1:
            raise ConfigError(
                f"cannot delete {adapter_name!r}, the only adapter of the model: use unload() to remove it"
            )
        if adapter_name == self._active:
            self._activate(next(n for n in self.peft_config if n != adapter_name))
        for path in self._adapter_paths.pop(adapter_name):
            layer = self._layers[path]
            layer.remove_named_adapter(adapter_name)
            if not layer.adapter_names():  # no adapter left: the base layer again
                self._set_module(path, layer.base_layer)
        still = {n for name, names in self._trained_names.items() if name != adapter_name for n in names}
        for name in self._trained_names.pop(adapter_name):
            if name in still:
                continue
            owner, attr = self._trained.pop(name)
            self._base_values.pop(name)
            getattr(owner, attr).requires_grad_(False)
            if name in self._trained_buffers:
                to_buffer(owner, attr, self._trained_buffers.pop(name))
        self._stash.pop(adapter_name, None)
        self._inference.discard(adapter_name)
        del self.peft_config[adapter_name]
        self._collect_layers()

    def _check_usable(self) -> None:
        if self._unloaded:
            raise RuntimeError("this PeftModel was merged or unloaded: use the model that call returned")
        if self._unmerged_values is not None:
            raise RuntimeError("the active adapter is merged into the weights (merge_adapter): unmerge_adapter() first")

    def _check_known(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise UnknownNameError("adapter name", adapter_name, list(self.peft_config))

    def _set_module(self, path: str, module: nn.Module) -> None:
        if path == "":  # the base model is itself one layer
            self.base_model = module
        else:
            replace_module(self.base_model, path, module)

    def _collect_layers(self) -> None:
        self._layers = {path: m for path, m in self.base_model.named_modules() if isinstance(m, AdaptedLayer)}

    def _inject(self, adapter_name: str, config: PeftConfig, assignments: list[LayerPlan]) -> None:
        """Attach adapter ``adapter_name`` (inactive unless it is the first) as ``assignments`` say."""
        names = trained_tensor_names(self.base_model, config, assignments)
        owners = base_tensors(self.base_model, buffers=True)
        for name in names:
            owner, attr = owners[name]
            if name not in self._trained:
                if attr in owner._buffers:  # a train_buffers buffer: trained as a parameter
                    self._trained_buffers[name] = attr not in owner._non_persistent_buffers_set
                    value = getattr(owner, attr)
                    delattr(owner, attr)
                    owner.register_parameter(attr, nn.Parameter(value.detach().clone(), requires_grad=False))
                self._trained[name] = (owner, attr)
                self._base_values[name] = getattr(owner, attr).detach().clone()
        self._trained_names[adapter_name] = names
        if self._active is not None:  # not the first adapter: its own values, from the base values
            self._stash[adapter_name] = {n: self._base_values[n].clone() for n in names}
        paths = []
        for entry in assignments:
            if entry.adapter is None:
                continue
            layer, path = entry.layer, entry.layer.path
            if path in self._layers:
                self._layers[path].add_named_adapter(adapter_name, entry.adapter)
            else:
                wrapper = layer.backend.adapted_layer_class(layer.module)
                wrapped = wrapper(layer.module, layer.backend, layer.spec, entry.adapter)
                wrapped.layer_path = path
                wrapped.refresh_guard()  # its run-time message names the layer
                wrapped.active_adapter = adapter_name
                if self._active is not None:
                    wrapped.activate(self._active)  # the new adapter waits in other_adapters
                self._set_module(path, wrapped)
            paths.append(path)
        self._adapter_paths[adapter_name] = paths
        self.peft_config[adapter_name] = config
        self._collect_layers()
        if self._active is not None:
            self._activate(self._active)  # flags and switches of the new layers

    def _swap_trained(self, old: str | None, new: str | None) -> None:
        """Store the values of ``old``'s trained tensors, put in ``new``'s (``None``: the base values)."""
        if old == new:
            return
        old_names = self._trained_names[old] if old is not None else []
        new_names = self._trained_names[new] if new is not None else []
        with torch.no_grad():
            if old is not None:
                self._stash[old] = {n: self._live(n).detach().clone() for n in old_names}
            for name in old_names:
                if name not in new_names:
                    self._live(name).copy_(self._base_values[name])
            if new is not None:
                values = self._stash.pop(new)
                for name in new_names:
                    self._live(name).copy_(values[name])

    def _live(self, name: str) -> torch.Tensor:
        owner, attr = self._trained[name]
        return getattr(owner, attr)

    @contextlib.contextmanager
    def _trained_values_of(self, adapter_name: str | None) -> Iterator[None]:
        """Context in which the fully trained tensors hold ``adapter_name``'s values (``None``: the base values)."""
        active = self._active
        self._swap_trained(active, adapter_name)
        try:
            yield
        finally:
            self._swap_trained(adapter_name, active)

    def _activate(self, adapter_name: str) -> None:
        if self._active is not None:  # (the first adapter's trained tensors hold its values already)
            self._swap_trained(self._active, adapter_name)
        self._active = adapter_name
        trainable = adapter_name not in self._inference
        enabled = {}
        for path, layer in self._layers.items():
            layer.activate(adapter_name)
            enabled[path] = layer.active_adapter is not None
            for name in layer.adapter_names():
                for param in layer.named_adapter(name).parameters():
                    param.requires_grad_(trainable and name == adapter_name)
        if self._disabled_states is not None:  # inside disable_adapter(): switched on when it ends
            self._disabled_states = enabled
            for layer in self._layers.values():
                layer.adapter_enabled = False
        else:
            for path, layer in self._layers.items():
                layer.adapter_enabled = enabled[path]
        for name, (owner, attr) in self._trained.items():
            getattr(owner, attr).requires_grad_(trainable and name in self._trained_names[adapter_name])


#: What an adapter name may be: it names a module attribute and, when saved, a subdirectory, so it is a plain
#: identifier (letters, digits, ``_`` and ``-``, not starting with ``-``; at most 64 characters): no path
#: separator, dot, whitespace or control character can make ``save_pretrained`` write elsewhere.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")


def check_name(adapter_name: str, taken: Iterable[str] = ()) -> str:
    """``adapter_name`` if it can name a new adapter beside those ``taken``; else a one-line :class:`ConfigError`."""
    if not isinstance(adapter_name, str) or ADAPTER_NAME.fullmatch(adapter_name) is None:
        raise ConfigError(
            f"adapter name {adapter_name!r}: give a name of letters, digits, '_' and '-' (at most 64, "
            "not starting with '-'): no path separators, dots, spaces or control characters"
        )
    taken = list(taken)
    if adapter_name in taken:
        raise ConfigError(
            f"adapter name {adapter_name!r} is already in use (adapters: {', '.join(taken)}); "
            "delete_adapter it first or choose another name"
        )
    return adapter_name


def to_buffer(owner: nn.Module, attr: str, persistent: bool) -> None:
    """Make the parameter ``owner.attr`` (a trained buffer) a buffer again."""
    value = getattr(owner, attr).detach()
    delattr(owner, attr)
    owner.register_buffer(attr, value, persistent=persistent)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def trained_tensor_names(model: nn.Module, config: PeftConfig, assignments: list[LayerPlan]) -> list[str]:
    """Names of the base tensors trained fully: ``train``, ``train_buffers`` and BitFit's layer biases."""
    names = select_tensors(model, config.train, buffers=False)
    names += select_tensors(model, config.train_buffers, buffers=True)
    for entry in assignments:
        if entry.adapter is not None and entry.adapter.trains_layer_bias:
            layer = entry.layer
            names += [_join(layer.path, n) for n in layer.backend.bias_parameter_names(layer.module)]
    return list(dict.fromkeys(names))
