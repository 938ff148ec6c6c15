"""``PeftModel``: a base model with named adapters attached, and ``get_peft_model``.

The API is Hugging Face peft's, with its semantics:

.. code-block:: python

    model = get_peft_model(base, MmeaConfig(rank=16))            # adapter "default", active
    model.add_adapter("water", EloraConfig(rank=8))              # a second one, inactive
    model.set_adapter("water")                                   # one adapter is active at a time
    with model.disable_adapter():                                # the base model
        ...
    model.save_pretrained("out")          # "default" in out/, the others in out/<name>/
    model = PeftModel.from_pretrained(fresh_base, "out")                    # frozen (is_trainable=False)
    model.load_adapter("out/water", adapter_name="water", is_trainable=True)
    plain = model.merge_and_unload()      # merges the active adapter; unload() merges none

``peft_config`` maps each adapter's name to its :class:`PeftConfig`, ``active_adapter`` names
the active one; ``delete_adapter`` removes one.  Each named adapter may adapt other layers:
a layer the active adapter does not adapt computes exactly its base layer.  Only the active
adapter's parameters have ``requires_grad`` (none when it was loaded with ``is_trainable=False``).

A model with one adapter has the state-dict keys it would have without the others
(``<layer>.adapter.<param>``) and compiles with TorchScript: each :class:`AdaptedLayer`
holds the active adapter in ``adapter`` and the others in ``other_adapters``, and
:meth:`PeftModel.set_adapter` swaps them (a compiled model keeps the adapter active when it
was compiled).

Base tensors trained fully (``PeftConfig.train``, ``train_buffers``, BitFit's layer biases)
belong to the adapter whose config trains them, as peft's ``modules_to_save``: each named
adapter has its own values of them, starting from the base values.  The model holds the
active adapter's values; :meth:`PeftModel.set_adapter` stores them and puts in the new active
adapter's (or the base values, for tensors it does not train).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from peft_equi.adapters.base import Adapter, AdapterConfig
from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import LayerPlan, assign, base_tensors, discover, select_tensors
from peft_equi.core.presets import resolve_config
from peft_equi.errors import ConfigError, NotMergeableError, PeftEquiError, UnknownNameError

DEFAULT_ADAPTER = "default"


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_path, _, attr = name.rpartition(".")
    return (model.get_submodule(module_path) if module_path else model), attr


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, attr = _owner(root, path)
    setattr(parent, attr, new)


class PeftModel(nn.Module):
    """A model with named adapters, one of them active.  Call it exactly like the base model.

    Attributes not found on the wrapper are looked up on the base model, so model-specific
    attributes (``r_max``, ``atomic_numbers``, ...) stay reachable.  Build it with
    :func:`get_peft_model` or :meth:`from_pretrained`.
    """

    def __init__(
        self,
        base_model: nn.Module,
        config: PeftConfig,
        assignments: list[LayerPlan],
        adapter_name: str = DEFAULT_ADAPTER,
    ) -> None:
        super().__init__()
        self.peft_config: dict[str, PeftConfig] = {}
        self._active: str | None = None
        self._unloaded = False
        self._inference: set[str] = set()  # adapters loaded with is_trainable=False
        self._original_requires_grad = {n: p.requires_grad for n, p in base_model.named_parameters()}
        self._layers: dict[str, AdaptedLayer] = {}  # every wrapper, any adapter, in model order
        self._adapter_paths: dict[str, list[str]] = {}  # adapter -> the layers it adapts
        self._trained: dict[str, tuple[nn.Module, str]] = {}  # trained by any adapter: name -> (owner, attribute)
        self._trained_names: dict[str, list[str]] = {}  # adapter -> the base tensors it trains
        self._trained_buffers: dict[str, bool] = {}  # buffers made parameters: name -> was persistent
        self._base_values: dict[str, torch.Tensor | None] = {}  # the base values of the trained tensors
        self._stash: dict[str, dict[str, torch.Tensor]] = {}  # inactive adapter -> its trained tensors' values
        self._disabled_states: dict[str, bool] | None = None  # inside disable_adapter(): the states to restore
        for param in base_model.parameters():
            param.requires_grad_(False)
        self.base_model = base_model
        self._inject(_check_name(adapter_name), config, assignments)
        self._activate(adapter_name)

    # -- calling and attribute access --

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._unloaded:
            raise RuntimeError("this PeftModel was merged or unloaded: use the model that call returned")
        return self.base_model(*args, **kwargs)

    # e3nn's jit.compile(peft_model) compiles ``base_model`` in place and returns this wrapper (attribute
    # lookups fall through to the base model, whose compile mode would otherwise be taken for this one's)
    __e3nn_compile_mode__ = None

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(peft_model)`` compiles the adapted base model (and returns it), active adapter only."""
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

    def _apply(self, fn: Any, recurse: bool = True) -> PeftModel:
        """``.to()``, ``.double()``, ``.cuda()``, ...: the stored values of fully trained tensors follow."""
        super()._apply(fn, recurse)
        for values in [self._base_values, *self._stash.values()]:
            for name, value in values.items():
                if value is not None:
                    values[name] = fn(value)
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if isinstance(state.get("peft_config"), PeftConfig):  # pickled before named adapters: one, "default"
            name = DEFAULT_ADAPTER
            self.peft_config = {name: state["peft_config"]}
            self._active = name
            self._inference = set()
            self._adapter_paths = {name: list(self._layers)}
            self._trained_names = {name: list(self._trained)}
            self._base_values = dict.fromkeys(self._trained)  # not kept then: unknown
            self._stash = {}
            self._disabled_states = None

    # -- named adapters --

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
        _check_name(adapter_name)
        if adapter_name in self.peft_config:
            raise ConfigError(
                f"adapter name {adapter_name!r} is already in use (adapters: {', '.join(self.peft_config)}); "
                "delete_adapter it first or choose another name"
            )
        config = _resolve(peft_config, options)
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
                _to_buffer(owner, attr, self._trained_buffers.pop(name))
        self._stash.pop(adapter_name, None)
        self._inference.discard(adapter_name)
        del self.peft_config[adapter_name]
        self._collect_layers()

    def _check_usable(self) -> None:
        if self._unloaded:
            raise RuntimeError("this PeftModel was merged or unloaded: use the model that call returned")

    def _check_known(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise UnknownNameError("adapter name", adapter_name, list(self.peft_config))

    def _set_module(self, path: str, module: nn.Module) -> None:
        if path == "":  # the base model is itself one layer
            self.base_model = module
        else:
            _replace(self.base_model, path, module)

    def _collect_layers(self) -> None:
        self._layers = {path: m for path, m in self.base_model.named_modules() if isinstance(m, AdaptedLayer)}

    def _inject(self, adapter_name: str, config: PeftConfig, assignments: list[LayerPlan]) -> None:
        """Attach adapter ``adapter_name`` (inactive unless it is the first) as ``assignments`` say."""
        if self._trained and any(v is None for v in self._base_values.values()):
            raise PeftEquiError(
                "this PeftModel was pickled by a peft_equi before named adapters, which kept no base values "
                "of its fully trained tensors: save_pretrained it and load it into the base model to add adapters"
            )
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

    # -- inspection --

    @property
    def adapted_layers(self) -> dict[str, AdaptedLayer]:
        """Module path -> wrapper of the layers the active adapter adapts, in model order."""
        return {path: layer for path, layer in self._layers.items() if layer.active_adapter is not None}

    def adapters(self, adapter_name: str | None = None) -> Iterator[tuple[str, Adapter]]:
        """``(module path, adapter)`` pairs of adapter ``adapter_name`` (default: the active one), in model order."""
        adapter_name = self.active_adapter if adapter_name is None else adapter_name
        self._check_known(adapter_name)
        for path, layer in self._layers.items():
            adapter = layer.named_adapter(adapter_name)
            if adapter is not None:
                yield path, adapter

    def trainable_parameter_breakdown(self) -> list[tuple[str, str, int]]:
        """``(group, name, count)`` for each adapted layer and each fully trained tensor (active adapter)."""
        rows = [(a.name, path or "<root>", _count(a)) for path, a in self.adapters()]
        rows += [
            ("trained", name, getattr(owner, attr).numel())
            for name, (owner, attr) in self._trained.items()
            if getattr(owner, attr).requires_grad
        ]
        return rows

    def num_trainable_parameters(self) -> int:
        """Number of parameters with ``requires_grad`` (the active adapter + its fully trained tensors)."""
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
    def disable_adapter(self) -> Iterator[None]:
        """Context in which the model behaves as the base model, whichever adapter is active
        (fully trained tensors keep the active adapter's values)."""
        self._check_usable()
        if self._disabled_states is not None:  # nested: already off
            yield
            return
        self._disabled_states = {path: layer.adapter_enabled for path, layer in self._layers.items()}
        for layer in self._layers.values():
            layer.adapter_enabled = False
        try:
            yield
        finally:
            states, self._disabled_states = self._disabled_states, None
            for path, layer in self._layers.items():
                layer.adapter_enabled = states.get(path, layer.active_adapter is not None)

    # -- saving and loading --

    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """Tensors of adapter ``adapter_name`` (default: the active one): its parameters
        (``adapters.<path>.<name>``) and its fully trained tensors (``base.<name>``), sharing storage
        with the model."""
        adapter_name = self.active_adapter if adapter_name is None else adapter_name
        self._check_known(adapter_name)
        state = {}
        for path, adapter in self.adapters(adapter_name):
            for name, tensor in adapter.state_dict().items():
                state[f"adapters.{path}.{name}" if path else f"adapters.{name}"] = tensor
        for name in self._trained_names[adapter_name]:
            if adapter_name == self._active:
                state[f"base.{name}"] = self._live(name).detach()
            else:
                state[f"base.{name}"] = self._stash[adapter_name][name]
        return state

    def save_pretrained(self, save_directory: str | Path, selected_adapters: list[str] | None = None) -> Path:
        """Write each adapter (default: all) as ``adapter_config.json`` + ``adapter_model.safetensors``:
        the adapter named ``"default"`` into ``save_directory``, the others into ``save_directory/<name>``
        (as peft).  Adapter weights and fully trained tensors only.  Returns ``save_directory``."""
        from peft_equi.utils.save_and_load import save_adapter

        self._check_usable()
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            self._check_known(name)
        directory = Path(save_directory)
        for name in names:
            save_adapter(self, directory if name == DEFAULT_ADAPTER else directory / name, name)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | Path,
        adapter_name: str = DEFAULT_ADAPTER,
        is_trainable: bool = False,
        *,
        allow_base_mismatch: bool = False,
    ) -> PeftModel:
        """Attach the adapter saved in directory ``model_id`` to ``model`` (which holds the base weights).

        As peft: the adapter is called ``adapter_name`` and is frozen, and the model put in
        ``eval()`` mode, unless ``is_trainable``.  The saved tensors, their checksum and the
        base fingerprint are checked before ``model`` is changed (see
        :mod:`peft_equi.utils.save_and_load`; ``allow_base_mismatch`` accepts other base weights
        with a warning).
        """
        from peft_equi.utils.save_and_load import load_adapter

        if isinstance(model, PeftModel):
            raise ConfigError(
                "from_pretrained takes the base model, not a PeftModel: add a saved adapter to a PeftModel "
                "with its load_adapter(directory, adapter_name)"
            )
        return load_adapter(
            model,
            model_id,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            allow_base_mismatch=allow_base_mismatch,
        )

    def load_adapter(
        self,
        model_id: str | Path,
        adapter_name: str,
        is_trainable: bool = False,
        *,
        allow_base_mismatch: bool = False,
    ) -> None:
        """Add the adapter saved in directory ``model_id`` as ``adapter_name``, inactive
        (:meth:`set_adapter`); frozen and the model in ``eval()`` mode unless ``is_trainable`` (as peft)."""
        from peft_equi.utils.save_and_load import load_adapter

        self._check_usable()
        load_adapter(
            self,
            model_id,
            adapter_name=adapter_name,
            is_trainable=is_trainable,
            allow_base_mismatch=allow_base_mismatch,
        )

    def _set_trainable(self, adapter_name: str, is_trainable: bool) -> None:
        if is_trainable:
            self._inference.discard(adapter_name)
        else:
            self._inference.add(adapter_name)
        self._activate(self.active_adapter)

    # -- merging --

    def merge_and_unload(self) -> nn.Module:
        """Fold the active adapter into its layers, remove all adapters and return the plain base model.

        Raises :class:`NotMergeableError` (naming every blocking layer) before changing
        anything when an adapter depends on the input (MMEA, FiLM with conditioning).
        Fully trained base tensors keep the active adapter's values.
        """
        self._check_usable()
        check_mergeable(self._layers)
        return self._unload(merge=True)

    def unload(self) -> nn.Module:
        """Remove all adapters without merging and return the base model (fully trained base
        tensors keep the active adapter's values)."""
        self._check_usable()
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
            _to_buffer(*self._trained[name], persistent)
        for name, param in root.named_parameters():
            param.requires_grad_(self._original_requires_grad.get(name, True))
        self._layers = {}
        self._stash = {}
        self._unloaded = True
        return root


def _check_name(adapter_name: str) -> str:
    if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
        raise ConfigError(f"adapter name {adapter_name!r}: give a non-empty string without '.'")
    return adapter_name


def _to_buffer(owner: nn.Module, attr: str, persistent: bool) -> None:
    """Make the parameter ``owner.attr`` (a trained buffer) a buffer again."""
    value = getattr(owner, attr).detach()
    delattr(owner, attr)
    owner.register_buffer(attr, value, persistent=persistent)


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


def trained_tensor_names(model: nn.Module, config: PeftConfig, assignments: list[LayerPlan]) -> list[str]:
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


def plan_layers(model: nn.Module, config: PeftConfig) -> list[LayerPlan]:
    """Discover layers and build adapters for ``config`` without touching ``model``."""
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ValueError(
            "the model already has peft_equi adapters; add more to its PeftModel with add_adapter, "
            "or unload or merge them first"
        )
    return assign(discover(model), config)


def _resolve(config: PeftConfig | AdapterConfig | str, options: dict[str, Any]) -> PeftConfig:
    try:
        return resolve_config(config, **options)
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, config if isinstance(config, str) else "config") from None


def get_peft_model(
    model: nn.Module,
    config: PeftConfig | AdapterConfig | str,
    adapter_name: str = DEFAULT_ADAPTER,
    **options: Any,
) -> PeftModel:
    """Attach adapters to ``model`` (in place) as adapter ``adapter_name``, and freeze everything else.

    ``config`` is a :class:`PeftConfig`, an adapter's config (``MmeaConfig(rank=16)``: that
    adapter on every layer it supports, as peft's ``get_peft_model(model, LoraConfig(...))``)
    or the name of a preset or adapter (see :func:`peft_equi.list_presets`) with ``options``
    for it: ``get_peft_model(m, "mmea", rank=16)``.  Add more adapters with
    :meth:`PeftModel.add_adapter`.  The model is checked completely before it is changed: on
    error it is left as it was.  Invalid options raise :class:`ConfigError` (a ``ValueError``)
    naming each.
    """
    _check_name(adapter_name)
    config = _resolve(config, options)
    assignments = plan_layers(model, config)
    trained_tensor_names(model, config, assignments)  # validates the train patterns before any change
    return PeftModel(model, config, assignments, adapter_name)
