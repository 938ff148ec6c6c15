"""``PeftModel``: a base model with adapters attached, and ``get_peft_model``.

The words are Hugging Face peft's: ``get_peft_model``, ``print_trainable_parameters``,
``disable_adapters``, ``save_adapter``/``load_adapter``, ``merge_and_unload``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from peft_equi.adapters.base import Adapter
from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import Assignment, assign, discover, select_tensors
from peft_equi.core.presets import resolve_config
from peft_equi.errors import ConfigError, NotMergeableError


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, attr = _owner(root, path)
    setattr(parent, attr, new)


class PeftModel(nn.Module):
    """A model with adapters.  Call it exactly like the base model.

    Attributes not found on the wrapper are looked up on the base model, so model-specific
    attributes (``r_max``, ``atomic_numbers``, ...) stay reachable.
    """

    def __init__(self, base_model: nn.Module, config: PeftConfig, assignments: list[Assignment]) -> None:
        super().__init__()
        self.peft_config = config
        self._unloaded = False
        self._original_requires_grad = {n: p.requires_grad for n, p in base_model.named_parameters()}
        trained = trained_tensor_names(base_model, config, assignments)
        self._trained_buffers: dict[str, bool] = {}  # name -> was persistent
        buffer_names = {n for n, _ in base_model.named_buffers()}
        for name in select_tensors(base_model, config.train_buffers, buffers=True):
            if name not in buffer_names:
                continue  # already a parameter: just trained
            owner, attr = _owner(base_model, name)
            self._trained_buffers[name] = attr not in owner._non_persistent_buffers_set
            value = getattr(owner, attr)
            delattr(owner, attr)
            owner.register_parameter(attr, nn.Parameter(value.detach().clone()))
        for param in base_model.parameters():
            param.requires_grad_(False)
        self._layers: dict[str, AdaptedLayer] = {}
        for entry in assignments:
            if entry.adapter is None:
                continue
            layer = entry.layer
            wrapper = layer.backend.adapted_layer_class(layer.module)
            wrapped = wrapper(layer.module, layer.backend, layer.spec, entry.adapter)
            self._layers[layer.path] = wrapped
        # trained base tensors: original name -> (owning module, attribute); owners survive wrapping
        self._trained = {name: _owner(base_model, name) for name in trained}
        for owner, attr in self._trained.values():
            getattr(owner, attr).requires_grad_(True)
        if "" in self._layers:  # the base model is itself one layer
            base_model = self._layers[""]
        else:
            for path, wrapped in self._layers.items():
                _replace(base_model, path, wrapped)
        self.base_model = base_model

    # -- calling and attribute access --

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._unloaded:
            raise RuntimeError("this PeftModel was merged or unloaded: use the model that call returned")
        return self.base_model(*args, **kwargs)

    # e3nn's jit.compile(peft_model) compiles ``base_model`` in place and returns this wrapper (attribute
    # lookups fall through to the base model, whose compile mode would otherwise be taken for this one's)
    __e3nn_compile_mode__ = None

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(peft_model)`` compiles the adapted base model (and returns it)."""
        if self._unloaded:
            raise RuntimeError("this PeftModel was merged or unloaded: compile the model that call returned")
        return self.base_model

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # -- inspection --

    @property
    def adapted_layers(self) -> dict[str, AdaptedLayer]:
        """Module path -> wrapper, in model order."""
        return dict(self._layers)

    def adapters(self) -> Iterator[tuple[str, Adapter]]:
        """``(module path, adapter)`` pairs."""
        for path, layer in self._layers.items():
            yield path, layer.adapter

    def trainable_parameter_breakdown(self) -> list[tuple[str, str, int]]:
        """``(group, name, count)`` for each adapted layer and each fully trained tensor."""
        rows = [(a.name, path or "<root>", _count(a)) for path, a in self.adapters()]
        rows += [
            ("trained", name, getattr(owner, attr).numel())
            for name, (owner, attr) in self._trained.items()
            if getattr(owner, attr).requires_grad
        ]
        return rows

    def num_trainable_parameters(self) -> int:
        """Number of parameters with ``requires_grad`` (adapters + fully trained tensors)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def print_trainable_parameters(self, per_layer: bool = True) -> None:
        """Print the totals (peft style) and a breakdown per adapter and per layer."""
        trainable = self.num_trainable_parameters()
        total = sum(p.numel() for p in self.parameters())
        share = 100 * trainable / total if total else 0.0
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {share:.4f}")
        rows = self.trainable_parameter_breakdown()
        groups: dict[str, int] = {}
        for group, _, count in rows:
            groups[group] = groups.get(group, 0) + count
        for group, count in groups.items():
            print(f"  {group:<14} {count:>12,}")
        if per_layer:
            width = max((len(name) for _, name, _ in rows), default=10)
            for group, name, count in rows:
                print(f"    {name:<{width}}  {group:<12} {count:>10,}")

    # -- switching off --

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Context in which the model behaves as the base model (fully trained tensors keep their values)."""
        states = {path: layer.adapter_enabled for path, layer in self._layers.items()}
        for layer in self._layers.values():
            layer.adapter_enabled = False
        try:
            yield
        finally:
            for path, layer in self._layers.items():
                layer.adapter_enabled = states[path]

    # -- saving --

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter parameters (``adapters.<path>.<name>``) and fully trained tensors (``base.<name>``)."""
        state = {}
        for path, adapter in self.adapters():
            for name, tensor in adapter.state_dict().items():
                state[f"adapters.{path}.{name}" if path else f"adapters.{name}"] = tensor
        for name, (owner, attr) in self._trained.items():
            state[f"base.{name}"] = getattr(owner, attr).detach()
        return state

    def save_adapter(self, directory: str | Path) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (adapter weights only)."""
        from peft_equi.utils.save_and_load import save_adapter

        return save_adapter(self, directory)

    # -- merging --

    def merge_and_unload(self) -> nn.Module:
        """Fold every adapter into its layer and return the plain base model.

        Raises :class:`NotMergeableError` (naming every blocking layer) before changing
        anything when an adapter depends on the input (MMEA, FiLM with conditioning).
        """
        check_mergeable(self._layers)
        return self._unload(merge=True)

    def unload(self) -> nn.Module:
        """Remove the adapters without merging and return the base model."""
        return self._unload(merge=False)

    def _unload(self, merge: bool) -> nn.Module:
        root = self.base_model
        for path, layer in self._layers.items():
            base = layer.merge(path) if merge else layer.base_layer
            if path == "":
                root = base
            else:
                _replace(root, path, base)
        for name, persistent in self._trained_buffers.items():
            owner, attr = _owner(root, name)
            value = getattr(owner, attr).detach()
            delattr(owner, attr)
            owner.register_buffer(attr, value, persistent=persistent)
        for name, param in root.named_parameters():
            param.requires_grad_(self._original_requires_grad.get(name, True))
        self._layers = {}
        self._unloaded = True
        return root


def check_mergeable(layers: dict[str, AdaptedLayer]) -> None:
    """Raise :class:`NotMergeableError` naming every layer (by path) whose adapter cannot be folded in."""
    by_reason: dict[str, list[str]] = {}
    for path, layer in layers.items():
        if (reason := layer.merge_blocker()) is not None:
            by_reason.setdefault(reason, []).append(path or "<root>")
    if by_reason:
        parts = [
            f"{reason} ({', '.join(paths[:4])}{f', +{len(paths) - 4} more' if len(paths) > 4 else ''})"
            for reason, paths in by_reason.items()
        ]
        raise NotMergeableError("cannot merge: " + "; ".join(parts))


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold the adapters of every :class:`AdaptedLayer` inside ``model`` into its layer, in place.

    For models adapted in place whose :class:`PeftModel` wrapper is gone, e.g. a NequIP
    model built by a ``nequip-train`` config or loaded from its checkpoint.  Checks every
    layer first: a non-mergeable adapter raises :class:`NotMergeableError` and leaves
    ``model`` unchanged.  Parameters keep their ``requires_grad``.  Returns ``model``
    (or the merged layer when ``model`` itself is an :class:`AdaptedLayer`).
    """
    layers = {path: m for path, m in model.named_modules() if isinstance(m, AdaptedLayer)}
    check_mergeable(layers)
    for path, layer in layers.items():
        if path == "":
            return layer.merge(path)
        _replace(model, path, layer.merge(path))
    return model


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def trained_tensor_names(model: nn.Module, config: PeftConfig, assignments: list[Assignment]) -> list[str]:
    """Names of the base tensors trained fully: ``train``, ``train_buffers`` and BitFit's layer biases."""
    names = select_tensors(model, config.train, buffers=False)
    names += select_tensors(model, config.train_buffers, buffers=True)
    for entry in assignments:
        if entry.adapter is not None and entry.adapter.trains_layer_bias:
            layer = entry.layer
            names += [_join(layer.path, n) for n in layer.backend.bias_parameter_names(layer.module)]
    return list(dict.fromkeys(names))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def plan_assignments(model: nn.Module, config: PeftConfig) -> list[Assignment]:
    """Discover layers and build adapters for ``config`` without touching ``model``."""
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ValueError("the model already has peft_equi adapters; unload or merge them first")
    return assign(discover(model), config)


def get_peft_model(model: nn.Module, config: PeftConfig | str, **options: Any) -> PeftModel:
    """Attach adapters to ``model`` (in place) and freeze everything else.

    ``config`` is a :class:`PeftConfig` or the name of a preset or adapter (see
    :func:`peft_equi.list_presets`), with ``options`` for it: ``get_peft_model(m, "mmea",
    rank=16)``.  The model is checked completely before it is changed: on error it is
    left as it was.  Invalid options raise :class:`ConfigError` (a ``ValueError``) naming each.
    """
    try:
        config = resolve_config(config, **options)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, config if isinstance(config, str) else "config") from None
    assignments = plan_assignments(model, config)
    trained_tensor_names(model, config, assignments)  # validates the train patterns before any change
    return PeftModel(model, config, assignments)
