"""``PeftModel``: a base model with named adapters attached, and ``get_peft_model``.

The API is Hugging Face peft's, with its semantics:

.. code-block:: python

    >>> import copy, tempfile
    >>> from e3nn import o3
    >>> from peft_equi import EloraConfig, MmeaConfig, PeftModel, get_peft_model
    >>> base = o3.Linear("8x0e+4x1o", "8x0e+4x1o")
    >>> fresh_base = copy.deepcopy(base)
    >>> model = get_peft_model(base, MmeaConfig(rank=4))           # adapter "default", active
    >>> model.add_adapter("water", EloraConfig(rank=2))             # a second one, inactive
    >>> model.set_adapter("water")                                  # one adapter is active at a time
    >>> with model.disable_adapter():                               # the base model
    ...     pass
    >>> out = model.save_pretrained(tempfile.mkdtemp())  # "default" in out/, the others in out/<name>/
    >>> model = PeftModel.from_pretrained(fresh_base, out)          # frozen (is_trainable=False)
    >>> model.load_adapter(out / "water", adapter_name="water", is_trainable=True)
    >>> model.set_adapter("water")
    >>> plain = model.merge_and_unload()  # merges the active adapter (MMEA is not mergeable); unload() merges none
    >>> type(plain).__name__
    'Linear'

``peft_config`` maps each adapter's name to its :class:`PeftConfig`, ``active_adapter`` names
the active one; ``delete_adapter`` removes one.  Each named adapter may adapt other layers:
a layer the active adapter does not adapt computes exactly its base layer.  Only the active
adapter's parameters have ``requires_grad`` (none when it was loaded with ``is_trainable=False``).

A model with one adapter has the state-dict keys it would have without the others
(``<layer>.adapter.<param>``) and compiles with TorchScript: each :class:`AdaptedLayer`
holds the active adapter in ``adapter`` and the others in ``other_adapters``, and
:meth:`PeftModel.set_adapter` swaps them (a compiled model keeps the adapter active when it
was compiled).

Base tensors trained fully (``PeftConfig.fully_trained``, ``fully_trained_buffers``, BitFit's layer biases)
belong to the adapter whose config trains them, as peft's ``modules_to_save``: each named
adapter has its own values of them, starting from the base values.  The model holds the
active adapter's values; :meth:`PeftModel.set_adapter` stores them and puts in the new active
adapter's (or the base values, for tensors it does not train).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.adapter import Adapter, AdapterConfig
from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import LayerPlan, assign, base_tensors, discover, survey
from peft_equi.core.presets import resolve_config
from peft_equi.errors import AdapterLoadError, ConfigError
from peft_equi.tuner.merging import Merging, check_mergeable, merge_adapters
from peft_equi.tuner.named_adapters import DEFAULT_ADAPTER, NamedAdapters, check_name, trained_tensor_names
from peft_equi.tuner.save_and_load import (
    FINGERPRINT_FORM,
    adapter_config,
    base_fingerprint,
    check_base,
    read_adapter,
    write_adapter,
)
from peft_equi.tuner.state import UNLOADED, TunerState
from peft_equi.tuner.state_dict import (
    adapter_key,
    listing,
    mismatches,
    set_peft_model_state_dict,
    trained_key,
    trained_names,
)
from peft_equi.version import __version__

__all__ = [
    "DEFAULT_ADAPTER",
    "PeftModel",
    "check_mergeable",
    "get_peft_model",
    "inject_adapter_in_model",
    "merge_adapters",
    "plan_layers",
]


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
        #: Everything else the tuner keeps beside its modules (:class:`~peft_equi.tuner.state.TunerState`).
        self.tuner_state = TunerState({n: p.requires_grad for n, p in base_model.named_parameters()})
        for param in base_model.parameters():
            param.requires_grad_(False)
        self.base_model = base_model
        self._inject(check_name(adapter_name), config, assignments)
        self._activate(adapter_name)

    # -- calling and attribute access --

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.tuner_state.unloaded:
            raise RuntimeError(UNLOADED)
        return self.base_model(*args, **kwargs)

    # e3nn's jit.compile(peft_model) compiles ``base_model`` in place and returns this wrapper (attribute
    # lookups fall through to the base model, whose compile mode would otherwise be taken for this one's)
    __e3nn_compile_mode__ = None

    def __prepare_scriptable__(self) -> nn.Module:
        """``torch.jit.script(peft_model)`` compiles the adapted base model (and returns it), active adapter only."""
        if self.tuner_state.unloaded:
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
        self.tuner_state.apply(fn)
        return self

    # -- inspection --

    def get_base_model(self) -> nn.Module:
        """The user's model, with the adapted layers inside it (peft's ``get_base_model``).

        Here it is also :attr:`base_model`, where peft's ``base_model`` is its tuner (``LoraModel``,
        whose ``model`` is the user's model): this ``PeftModel`` is the tuner itself, so that its
        state-dict keys are ``base_model.<the model's keys>`` and TorchScript compiles ``base_model``.
        """
        return self.base_model

    @property
    def adapted_layers(self) -> dict[str, AdaptedLayer]:
        """Module path -> wrapper of the layers the active adapter adapts, in model order."""
        return {path: layer for path, layer in self.tuner_state.layers.items() if layer.active_adapter is not None}

    def adapters(self, adapter_name: str | None = None) -> Iterator[tuple[str, Adapter]]:
        """``(module path, adapter)`` pairs of adapter ``adapter_name`` (default: the active one), in model order."""
        adapter_name = self.active_adapter if adapter_name is None else adapter_name
        self._check_known(adapter_name)
        for path, layer in self.tuner_state.layers.items():
            adapter = layer.named_adapter(adapter_name)
            if adapter is not None:
                yield path, adapter

    def trainable_parameter_breakdown(self) -> list[tuple[str, str, int]]:
        """``(group, name, count)`` for each adapted layer and each fully trained tensor (active adapter)."""
        rows = [(a.name, path or "<root>", _count(a)) for path, a in self.adapters()]
        rows += [
            ("trained", name, getattr(owner, attr).numel())
            for name, (owner, attr) in self.tuner_state.trained.items()
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
        state = self.tuner_state
        state.check_usable()
        if state.disabled_states is not None:  # nested: already off
            yield
            return
        state.disabled_states = {path: layer.adapter_enabled for path, layer in state.layers.items()}
        for layer in state.layers.values():
            layer.adapter_enabled = False
        try:
            yield
        finally:
            states, state.disabled_states = state.disabled_states, None
            for path, layer in state.layers.items():
                layer.adapter_enabled = states.get(path, layer.active_adapter is not None)

    # -- saving and loading --

    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        """Tensors of adapter ``adapter_name`` (default: the active one): its parameters
        (``adapters.<path>.<name>``) and its fully trained tensors (``base.<name>``), sharing storage
        with the model (the keys: :mod:`peft_equi.tuner.state_dict`)."""
        adapter_name = self.active_adapter if adapter_name is None else adapter_name
        self._check_known(adapter_name)
        tensors = {}
        for path, adapter in self.adapters(adapter_name):
            for name, tensor in adapter.state_dict().items():
                tensors[adapter_key(path, name)] = tensor
        for name, value in self.tuner_state.trained_values(adapter_name).items():
            tensors[trained_key(name)] = value
        return tensors

    def save_pretrained(self, save_directory: str | Path, selected_adapters: list[str] | str | None = None) -> Path:
        """Write each adapter (default: all; one name or a list of names) as ``adapter_config.json`` +
        ``adapter_model.safetensors``: the adapter named ``"default"`` into ``save_directory``, the others
        into ``save_directory/<name>`` (as peft).  Adapter weights and fully trained tensors only
        (:mod:`peft_equi.tuner.save_and_load`).  Returns ``save_directory``."""
        self.tuner_state.check_usable()
        if selected_adapters is None:
            names = list(self.peft_config)
        else:
            names = [selected_adapters] if isinstance(selected_adapters, str) else list(selected_adapters)
        for name in names:
            self._check_known(name)
        directory = Path(save_directory)
        for name in names:
            self._save(directory if name == DEFAULT_ADAPTER else directory / name, name)
        return directory

    def _save(self, directory: Path, adapter_name: str) -> None:
        tensors = {k: v.detach().cpu().clone() for k, v in self.adapter_state_dict(adapter_name).items()}
        layers = {path: self.tuner_state.layers[path] for path, _ in self.adapters(adapter_name)}
        # the base as this adapter sees it: tensors trained by another adapter hold their base values
        with self.tuner_state.trained_values_of(adapter_name):
            fingerprint = base_fingerprint(
                ((path, layer.base_layer, type(layer)) for path, layer in layers.items()),
                trained_names(tensors),  # stored: replaced on load
            )
        base = self.base_model
        meta = {
            "peft_equi_version": __version__,
            "base_model_class": f"{type(base).__module__}.{type(base).__qualname__}",
            "config": json.loads(self.peft_config[adapter_name].to_json()),
            "layers": {
                path: {
                    "adapter": layer.named_adapter(adapter_name).name,
                    "backend": layer.name,
                    "spec": layer.spec.summary(),
                }
                for path, layer in layers.items()
            },
            "base_fingerprint": {"form": FINGERPRINT_FORM, "tensors": fingerprint},
        }
        write_adapter(directory, tensors, meta)

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
        ``eval()`` mode, unless ``is_trainable``.  The saved tensors are checked against the
        adapters the saved config builds on this model (missing or unexpected keys, shapes), and
        so are their checksum and the base fingerprint, before ``model`` is changed (see
        :mod:`peft_equi.tuner.save_and_load`; ``allow_base_mismatch`` accepts other base weights
        with a warning).
        """
        if isinstance(model, PeftModel):
            raise ConfigError(
                "from_pretrained takes the base model, not a PeftModel: add a saved adapter to a PeftModel "
                "with its load_adapter(directory, adapter_name)"
            )
        check_name(adapter_name)
        directory = Path(model_id)
        meta, tensors = read_adapter(directory)
        config = adapter_config(meta, directory)
        assignments = plan_layers(model, config)
        check_saved_adapter(meta, tensors, model, config, assignments, directory, allow_base_mismatch)
        peft_model = cls(model, config, assignments, adapter_name)
        peft_model._set_loaded(tensors, adapter_name, is_trainable, directory)
        return peft_model

    def load_adapter(
        self,
        model_id: str | Path,
        adapter_name: str,
        is_trainable: bool = False,
        *,
        allow_base_mismatch: bool = False,
    ) -> None:
        """Add the adapter saved in directory ``model_id`` as ``adapter_name``, inactive
        (:meth:`set_adapter`); frozen and the model in ``eval()`` mode unless ``is_trainable`` (as peft).
        Checked as by :meth:`from_pretrained` before the model is changed."""
        self.tuner_state.check_usable()
        check_name(adapter_name, self.peft_config)
        directory = Path(model_id)
        meta, tensors = read_adapter(directory)
        config = adapter_config(meta, directory)
        assignments = assign(discover(self.base_model), config)
        # the base as this adapter will see it: tensors another adapter trains hold their base values
        with self.tuner_state.trained_values_of(None):
            check_saved_adapter(meta, tensors, self.base_model, config, assignments, directory, allow_base_mismatch)
        self._inject(adapter_name, config, assignments)
        self._set_loaded(tensors, adapter_name, is_trainable, directory)

    def _set_loaded(self, tensors: dict[str, torch.Tensor], adapter_name: str, is_trainable: bool, directory: Path):
        set_peft_model_state_dict(self, tensors, adapter_name, what=f"the tensors in {directory}")
        self.set_trainable(adapter_name, is_trainable)
        if not is_trainable:
            self.eval()

    def is_trainable(self, adapter_name: str) -> bool:
        """Whether adapter ``adapter_name`` gets ``requires_grad`` when active (it was not loaded with
        ``is_trainable=False``)."""
        self._check_known(adapter_name)
        return adapter_name not in self.tuner_state.inference

    def set_trainable(self, adapter_name: str, is_trainable: bool) -> None:
        """Let adapter ``adapter_name`` be trained when active, or freeze it (``is_trainable`` of
        :meth:`load_adapter`)."""
        self.tuner_state.check_usable()
        self._check_known(adapter_name)
        if is_trainable:
            self.tuner_state.inference.discard(adapter_name)
        else:
            self.tuner_state.inference.add(adapter_name)
        self._activate(self.active_adapter)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def plan_layers(model: nn.Module, config: PeftConfig) -> list[LayerPlan]:
    """Discover layers and build adapters for ``config`` without touching ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model must be a torch.nn.Module, not {type(model).__name__}")
    if any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise ValueError(
            "the model already has peft_equi adapters; add more to its PeftModel with add_adapter, "
            "or unload or merge them first"
        )
    layers, left_out = survey(model)
    return assign(layers, config, left_out=left_out)


def check_saved_adapter(
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    base_model: nn.Module,
    config: PeftConfig,
    assignments: list[LayerPlan],
    directory: Path,
    allow_base_mismatch: bool,
) -> None:
    """Check a saved adapter against the adapters ``assignments`` plan on ``base_model`` before anything is attached:
    layers adapted then and now, keys and shapes (:class:`AdapterLoadError` listing every difference), then the
    base fingerprint (:func:`~peft_equi.tuner.save_and_load.check_base`)."""
    planned = {a.layer.path: a.adapter for a in assignments if a.adapter is not None}
    trained = trained_tensor_names(base_model, config, assignments)
    expected = {
        adapter_key(path, name): tuple(tensor.shape)
        for path, adapter in planned.items()
        for name, tensor in adapter.state_dict().items()
    }
    owners = base_tensors(base_model, buffers=True)
    for name in trained:
        owner, attr = owners[name]
        expected[trained_key(name)] = tuple(getattr(owner, attr).shape)
    saved_layers = set(meta.get("layers", {}))
    problems = [
        listing(title, items)
        for title, items in [
            ("layers adapted when saved but not now", sorted(saved_layers - set(planned))),
            ("layers adapted now but not when saved", sorted(set(planned) - saved_layers)),
        ]
        if items
    ] + mismatches(expected, tensors)
    if problems:
        raise AdapterLoadError(f"adapter in {directory} does not fit this model:\n  " + "\n  ".join(problems))
    layers = ((a.layer.path, a.layer.module, a.layer.backend) for a in assignments if a.adapter is not None)
    check_base(meta, base_fingerprint(layers, trained), directory, allow_base_mismatch)


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
    config = resolve_config(config, **options)
    assignments = plan_layers(model, config)
    trained_tensor_names(model, config, assignments)  # checks the patterns before any change
    return PeftModel(model, config, assignments, adapter_name)


def inject_adapter_in_model(
    peft_config: PeftConfig | AdapterConfig | str, model: nn.Module, adapter_name: str = DEFAULT_ADAPTER
) -> nn.Module:
    """Attach adapters to ``model`` in place and return it, without a :class:`PeftModel` around it
    (peft's ``inject_adapter_in_model``): the layers hold their adapter, everything else is frozen.

    For code that keeps the model as it is (a NequIP model built by a training config); merge with
    :func:`merge_adapters`.  Named adapters, saving and loading need :func:`get_peft_model`.
    """
    return get_peft_model(model, peft_config, adapter_name).get_base_model()
