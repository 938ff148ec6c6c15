"""Discovery of adaptable layers and the plan of what a config does to a model.

Planning builds every adapter and checks every rule *before* the model is touched, so a
config that does not fit raises with nothing half-applied.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from peft_equi.adapters.base import Adapter
from peft_equi.backends.base import Backend
from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.config import PeftConfig, Rule, pattern_matches
from peft_equi.core.registry import ADAPTERS, BACKENDS
from peft_equi.core.spec import LayerSpec
from peft_equi.errors import RuleMatchError, UnsupportedLayerError


@dataclass(frozen=True)
class DiscoveredLayer:
    """A discovered adaptable layer: its module path, module, backend and spec."""

    path: str
    module: nn.Module
    backend: Backend
    spec: LayerSpec


def discover(model: nn.Module) -> list[DiscoveredLayer]:
    """All adaptable layers of ``model`` in module order (not descending into a found layer).

    A layer that already has adapters (an :class:`AdaptedLayer`) is found at its own path,
    as its base layer: ``module`` is the base layer, with its backend and spec.  Each module
    is offered to the registered backends in name order; the first that recognises it
    (:meth:`Backend.matches`) describes it (built-in backends recognise disjoint types).
    """
    backends = [BACKENDS.get(name) for name in BACKENDS.names()]

    def walk(module: nn.Module, path: str) -> Iterator[DiscoveredLayer]:
        if isinstance(module, AdaptedLayer):
            yield DiscoveredLayer(path, module.base_layer, module.backend, module.spec)
            return
        backend = next((b for b in backends if b.matches(module)), None)
        if backend is not None:
            yield DiscoveredLayer(path, module, backend, backend.describe(module))
            return
        for name, child in module.named_children():
            yield from walk(child, f"{path}.{name}" if path else name)

    return list(walk(model, ""))


@dataclass
class LayerPlan:
    """What the config says about one layer."""

    layer: DiscoveredLayer
    rule: Rule | None = None
    adapter: Adapter | None = None
    notes: list[str] = field(default_factory=list)


def assign(layers: list[DiscoveredLayer], config: PeftConfig, *, strict: bool = True) -> list[LayerPlan]:
    """Match layers to rules and build their adapters.

    With ``strict``, raise on a matched layer the adapter cannot adapt (rules with
    ``on_unsupported='error'``) and on a rule that adapts no layer.
    """
    adapted = dict.fromkeys(range(len(config.rules)), 0)
    refusals: dict[int, list[str]] = {i: [] for i in range(len(config.rules))}
    result = []
    for layer in layers:
        entry = LayerPlan(layer)
        result.append(entry)
        if any(pattern_matches(p, layer.path) for p in config.exclude):
            entry.notes.append("excluded by config")
            continue
        for i, rule in enumerate(config.rules):
            if not rule.matches(layer.path, layer.spec.kind):
                continue
            cls = ADAPTERS.get(rule.adapter)
            options = rule.adapter_config
            reason = cls.unsupported_reason(layer.spec, options)
            if reason is not None:
                message = f"layer {layer.path!r} ({layer.spec.describe()}): {reason}"
                if strict and rule.on_unsupported == "error":
                    raise UnsupportedLayerError(f"rule {rule.label!r}: {message}")
                refusals[i].append(message)
                entry.notes.append(f"skipped by rule {rule.label!r}: {reason}")
                continue
            entry.rule = rule
            entry.adapter = build_adapter(cls, layer, options)
            adapted[i] += 1
            break
    if strict:
        for i, rule in enumerate(config.rules):
            if adapted[i] == 0 and rule.required:
                why = "; ".join(refusals[i][:3]) if refusals[i] else "no layer path/kind matches it"
                raise RuleMatchError(f"rule {rule.label!r} adapts no layer: {why}")
    return result


def build_adapter(cls: type[Adapter], layer: DiscoveredLayer, options) -> Adapter:
    if not cls.equivariant:
        warnings.warn(
            f"the {cls.name!r} adapter is NOT equivariant (layer {layer.path!r}): use it only for ablations",
            UserWarning,
            stacklevel=4,
        )
    adapter = cls(layer.spec, options)
    if "dynamic" in vars(adapter):  # the flag's name before input_dependent: modulate() would never run
        raise TypeError(f"adapter {cls.name!r} sets self.dynamic: the flag is now called self.input_dependent")
    weight = layer.backend.weight(layer.module)
    return adapter.to(device=weight.device, dtype=weight.dtype)


def base_tensors(model: nn.Module, *, buffers: bool) -> dict[str, tuple[nn.Module, str]]:
    """Name -> ``(owning module, attribute)`` of the base model's parameters (and, with ``buffers``,
    floating-point buffers), in ``named_parameters`` order.

    Names are those of the model without adapters: an :class:`AdaptedLayer` stands for its base
    layer (``<layer>.weight``, not ``<layer>.base_layer.weight``) and its adapters are left out,
    so the names do not depend on which layers have adapters.  Shared tensors are listed once.
    """
    found: dict[str, tuple[nn.Module, str]] = {}
    seen_tensors: set[int] = set()
    seen_modules: set[int] = set()

    def walk(module: nn.Module, prefix: str, tensors: str) -> None:
        for attr, tensor in getattr(module, tensors).items():
            if tensor is None or id(tensor) in seen_tensors:
                continue
            if tensors == "_buffers" and not torch.is_floating_point(tensor):
                continue
            seen_tensors.add(id(tensor))
            found[prefix + attr] = (module, attr)
        for name, child in module._modules.items():
            if child is None or id(child) in seen_modules:
                continue
            seen_modules.add(id(child))
            child_prefix = f"{prefix}{name}."
            while isinstance(child, AdaptedLayer):
                child = child.base_layer
            walk(child, child_prefix, tensors)

    root = model
    while isinstance(root, AdaptedLayer):
        root = root.base_layer
    walk(root, "", "_parameters")
    if buffers:
        seen_modules.clear()
        walk(root, "", "_buffers")
    return found


def select_tensors(model: nn.Module, patterns: list[str], *, buffers: bool) -> list[str]:
    """Names (:func:`base_tensors`) of parameters (and, with ``buffers``, floating-point buffers)
    matching ``patterns``.

    Each pattern must match something.  A buffer pattern may also match a parameter (a
    model where that tensor is already a parameter): it is then simply trained.
    """
    names = list(base_tensors(model, buffers=buffers))
    selected: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if pattern_matches(pattern, n)]
        if not hits:
            what = "parameter or floating-point buffer" if buffers else "parameter"
            raise RuleMatchError(f"train pattern {pattern!r} matches no {what} of the model")
        selected += [n for n in hits if n not in selected]
    return selected
