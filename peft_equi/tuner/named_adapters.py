"""Several named adapters on one model, one active at a time: the part of :class:`~peft_equi.tuner.model.PeftModel`
that adds, switches and deletes them (peft's ``add_adapter`` / ``set_adapter`` / ``delete_adapter``).

Each :class:`AdaptedLayer` holds the active adapter in ``adapter`` and the others in
``other_adapters``; a layer the active adapter does not adapt computes its base layer.  Base
tensors trained fully (``PeftConfig.fully_trained``, ``fully_trained_buffers``, BitFit's layer biases) belong to
the adapter whose config trains them (as peft's ``modules_to_save``): the model holds the
active adapter's values, the others wait in a stash and :meth:`NamedAdapters.set_adapter`
swaps them in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

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
    """Mixin of :class:`~peft_equi.tuner.model.PeftModel`: its named adapters (bookkeeping in ``self.tuner_state``)."""

    @property
    def active_adapter(self) -> str:
        """The name of the active adapter."""
        assert self.tuner_state.active is not None
        return self.tuner_state.active

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
        self.tuner_state.check_usable()
        check_name(adapter_name, self.peft_config)
        config = resolve_config(peft_config, **options)
        assignments = assign(discover(self.base_model), config)
        trained_tensor_names(self.base_model, config, assignments)  # checks the patterns before any change
        self._inject(adapter_name, config, assignments)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter (trainable, unless loaded with ``is_trainable=False``)."""
        self.tuner_state.check_usable()
        self._check_known(adapter_name)
        self._activate(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name``; when it is the active one, the first remaining becomes active.

        Layers no remaining adapter adapts become their base layers again, and base tensors no
        remaining adapter trains get their base values (buffers become buffers again).
        """
        state = self.tuner_state
        state.check_usable()
        self._check_known(adapter_name)
        if len(self.peft_config) == 1:
            raise ConfigError(
                f"cannot delete {adapter_name!r}, the only adapter of the model: use unload() to remove it"
            )
        if adapter_name == state.active:
            self._activate(next(n for n in self.peft_config if n != adapter_name))
        for path in state.adapter_paths.pop(adapter_name):
            layer = state.layers[path]
            layer.remove_named_adapter(adapter_name)
            if not layer.adapter_names():  # no adapter left: the base layer again
                self._set_module(path, layer.base_layer)
        state.remove_trained(adapter_name)
        state.inference.discard(adapter_name)
        del self.peft_config[adapter_name]
        self._collect_layers()

    def _check_known(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise UnknownNameError("adapter name", adapter_name, list(self.peft_config))

    def _set_module(self, path: str, module: nn.Module) -> None:
        if path == "":  # the base model is itself one layer
            self.base_model = module
        else:
            replace_module(self.base_model, path, module)

    def _collect_layers(self) -> None:
        """Re-read :attr:`TunerState.layers` from the model (after layers were wrapped or unwrapped)."""
        layers = self.base_model.named_modules()
        self.tuner_state.layers = {path: m for path, m in layers if isinstance(m, AdaptedLayer)}

    def _inject(self, adapter_name: str, config: PeftConfig, assignments: list[LayerPlan]) -> None:
        """Attach adapter ``adapter_name`` (inactive unless it is the first) as ``assignments`` say."""
        state = self.tuner_state
        names = trained_tensor_names(self.base_model, config, assignments)
        state.add_trained(adapter_name, names, base_tensors(self.base_model, buffers=True))
        paths = []
        for entry in assignments:
            if entry.adapter is None:
                continue
            layer, path = entry.layer, entry.layer.path
            if path in state.layers:
                state.layers[path].add_named_adapter(adapter_name, entry.adapter)
            else:
                wrapped = layer.backend(layer.module, layer.spec, entry.adapter)
                wrapped.layer_path = path
                wrapped.refresh_guard()  # its run-time message names the layer
                wrapped.active_adapter = adapter_name
                if state.active is not None:
                    wrapped.activate(state.active)  # the new adapter waits in other_adapters
                self._set_module(path, wrapped)
            paths.append(path)
        state.adapter_paths[adapter_name] = paths
        self.peft_config[adapter_name] = config
        self._collect_layers()
        if state.active is not None:
            self._activate(state.active)  # flags and switches of the new layers

    def _activate(self, adapter_name: str) -> None:
        """Make ``adapter_name`` active in every layer and give ``requires_grad`` to its parameters alone
        (every adapter's: those under :attr:`AdaptedLayer.adapter_layer_names`) and its trained tensors."""
        state = self.tuner_state
        if state.active is not None:  # (the first adapter's trained tensors hold its values already)
            state.swap_trained(state.active, adapter_name)
        state.active = adapter_name
        trainable = adapter_name not in state.inference
        enabled = {}
        for path, layer in state.layers.items():
            layer.activate(adapter_name)
            enabled[path] = layer.active_adapter is not None
            for param in layer.adapter_parameters():
                param.requires_grad_(False)
            if trainable and enabled[path]:
                for param in layer.adapter.parameters():
                    param.requires_grad_(True)
        if state.disabled_states is not None:  # inside disable_adapter(): switched on when it ends
            state.disabled_states = enabled
            for layer in state.layers.values():
                layer.adapter_enabled = False
        else:
            for path, layer in state.layers.items():
                layer.adapter_enabled = enabled[path]
        for name, (owner, attr) in state.trained.items():
            getattr(owner, attr).requires_grad_(trainable and name in state.trained_names[adapter_name])


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


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def trained_tensor_names(model: nn.Module, config: PeftConfig, assignments: list[LayerPlan]) -> list[str]:
    """Names of the base tensors trained fully: ``fully_trained``, ``fully_trained_buffers`` and BitFit's
    layer biases."""
    names = select_tensors(model, config.fully_trained, buffers=False)
    names += select_tensors(model, config.fully_trained_buffers, buffers=True)
    for entry in assignments:
        if entry.adapter is not None and entry.adapter.trains_layer_bias:
            layer = entry.layer
            names += [_join(layer.path, n) for n in layer.backend.bias_parameter_names(layer.module)]
    return list(dict.fromkeys(names))
