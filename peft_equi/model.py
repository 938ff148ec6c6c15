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
from torch import nn

from peft_equi.adapters.base import Adapter, AdapterConfig
from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import LayerPlan, assign, survey
from peft_equi.errors import ConfigError
from peft_equi.merging import Merging, check_mergeable, merge_adapters
from peft_equi.named_adapters import DEFAULT_ADAPTER, NamedAdapters, check_name, resolve, trained_tensor_names
from peft_equi.utils.save_and_load import adapter_key

__all__ = ["DEFAULT_ADAPTER", "PeftModel", "check_mergeable", "get_peft_model", "merge_adapters", "plan_layers"]


class PeftModel(NamedAdapters, Merging, nn.Module):
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
        self._inject(check_name(adapter_name), config, assignments)
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
                state[adapter_key(path, name)] = tensor
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


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def plan_layers(model: nn.Module, config: PeftConfig) -> list[LayerPlan]:
    """Discover layers and build adapters for ``config`` without touching ``model``."""
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ValueError(
            "the model already has peft_equi adapters; add more to its PeftModel with add_adapter, "
            "or unload or merge them first"
        )
    layers, left_out = survey(model)
    return assign(layers, config, left_out=left_out)


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
    check_name(adapter_name)
    config = resolve(config, options)
    assignments = plan_layers(model, config)
    trained_tensor_names(model, config, assignments)  # validates the train patterns before any change
    return PeftModel(model, config, assignments, adapter_name)
