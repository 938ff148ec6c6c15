"""Discovery of adaptable layers and the plan of what a config does to a model.

Planning builds every adapter and checks every rule *before* the model is touched, so a
config that does not fit raises with nothing half-applied.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer, qualified_name
from peft_equi.core.adapter import Adapter
from peft_equi.core.config import PeftConfig, Rule, pattern_matches
from peft_equi.core.registry import ADAPTERS, BACKENDS
from peft_equi.core.spec import LayerSpec
from peft_equi.errors import RuleMatchError, UnsupportedLayerError


@dataclass(frozen=True)
class DiscoveredLayer:
    """A discovered adaptable layer: its module path, module, backend (the :class:`AdaptedLayer` subclass of its
    layer type) and spec.

    ``invariance``: for a dense layer whose backend proved its input invariant, the proof
    (``spec.irreps_known`` is then ``True``); empty otherwise.
    """

    path: str
    module: nn.Module
    backend: type[AdaptedLayer]
    spec: LayerSpec
    invariance: str = ""


@dataclass(frozen=True)
class NotAdaptable:
    """A module with parameters of its own that no backend adapts, and why (for ``inspect_model``)."""

    path: str
    module: nn.Module
    reason: str


def survey(model: nn.Module) -> tuple[list[DiscoveredLayer], list[NotAdaptable]]:
    """The adaptable layers of ``model`` (:func:`discover`) and the weighted modules left out, in module order.

    A module a backend matches but refuses (:meth:`AdaptedLayer.refusal`: a subclass overriding
    ``forward``, forward hooks, ...) and a module that owns parameters and that no backend
    matches (an e3nn ``BatchNorm``, a tensor product in a connection mode no backend
    describes, a third-party layer) are left out, with the reason.
    """
    backends = [BACKENDS.get(name) for name in BACKENDS.names()]
    found: list[DiscoveredLayer] = []
    left_out: list[NotAdaptable] = []

    def walk(module: nn.Module, path: str, ancestors: list[nn.Module]) -> None:
        if isinstance(module, AdaptedLayer):
            base, backend = module.base_layer, type(module)
            found.append(_described(path, base, backend, backend.describe(base), ancestors))
            return
        backend = next((b for b in backends if b.matches(module)), None)
        if backend is not None:
            reason = backend.refusal(module)
            if reason is None:
                found.append(_described(path, module, backend, backend.describe(module), ancestors))
                return
            left_out.append(NotAdaptable(path, module, f"{backend.name}: {reason}"))
        elif any(p is not None for p in module._parameters.values()):
            reason = next((r for b in backends if (r := b.refusal(module)) is not None), None)
            left_out.append(NotAdaptable(path, module, reason or _unrecognised(path, module)))
        for name, child in module.named_children():
            walk(child, f"{path}.{name}" if path else name, [*ancestors, module])

    walk(model, "", [])
    return found, left_out


def discover(model: nn.Module) -> list[DiscoveredLayer]:
    """All adaptable layers of ``model`` in module order (not descending into a found layer).

    A layer that already has adapters (an :class:`AdaptedLayer`) is found at its own path,
    as its base layer: ``module`` is the base layer, with its backend and spec.  Each module
    is offered to the registered backends in name order; the first that recognises it
    (:meth:`AdaptedLayer.matches`) describes it (built-in backends recognise disjoint types),
    unless it refuses it (:meth:`AdaptedLayer.refusal`; :func:`survey` lists those).  A dense
    layer's input is invariant where the backend proves it (:meth:`AdaptedLayer.invariant_input`).
    """
    return survey(model)[0]


def _described(
    path: str, module: nn.Module, backend: type[AdaptedLayer], spec: LayerSpec, ancestors: list[nn.Module]
) -> DiscoveredLayer:
    if spec.irreps_known:
        return DiscoveredLayer(path, module, backend, spec)
    proof = backend.invariant_input(module, ancestors)
    if proof is None:
        return DiscoveredLayer(path, module, backend, spec)
    return DiscoveredLayer(path, module, backend, dataclasses.replace(spec, irreps_known=True), f"proven: {proof}")


def _unrecognised(path: str, module: nn.Module) -> str:
    shapes = ", ".join(
        f"{name} {'x'.join(map(str, p.shape)) or 'scalar'}" for name, p in module._parameters.items() if p is not None
    )
    pattern = f"{path}.*" if path else "*"
    fix = f"train it fully with fully_trained=['{pattern}']"
    return f"no backend recognises {qualified_name(type(module))} ({shapes}); {fix}"


@dataclass
class LayerPlan:
    """What the config says about one layer."""

    layer: DiscoveredLayer
    rule: Rule | None = None
    adapter: Adapter | None = None
    notes: list[str] = field(default_factory=list)


def declared(layer: DiscoveredLayer, config: PeftConfig) -> DiscoveredLayer:
    """``layer`` with its input invariant when ``config.invariant_inputs`` declares it (a layer whose
    features its module does not state); else ``layer`` unchanged."""
    if layer.spec.irreps_known or not any(pattern_matches(p, layer.path) for p in config.invariant_inputs):
        return layer
    spec = dataclasses.replace(layer.spec, irreps_known=True)
    return dataclasses.replace(layer, spec=spec, invariance="declared by invariant_inputs")


def _declarable(layer: DiscoveredLayer) -> bool:
    """A layer whose module does not state its features (proven or not): what invariant_inputs may name."""
    return not layer.spec.irreps_known or bool(layer.invariance)


def assign(
    layers: list[DiscoveredLayer],
    config: PeftConfig,
    *,
    strict: bool = True,
    left_out: list[NotAdaptable] | None = None,
) -> list[LayerPlan]:
    """Match layers to rules and build their adapters.

    With ``strict``, raise on a matched layer the adapter cannot adapt (rules with
    ``on_unsupported='error'``), on a rule that adapts no layer (naming up to three modules of
    ``left_out`` its targets match, and why they are not adaptable) and on an
    ``invariant_inputs`` pattern that names no layer whose features its module leaves open.
    """
    if strict:
        for pattern in config.invariant_inputs:
            if not any(pattern_matches(pattern, layer.path) for layer in layers if _declarable(layer)):
                raise RuleMatchError(
                    f"invariant_inputs pattern {pattern!r} matches no layer whose features its module leaves open "
                    "(dense layers such as torch.nn.Linear)"
                )
    adapted = dict.fromkeys(range(len(config.rules)), 0)
    refusals: dict[int, list[str]] = {i: [] for i in range(len(config.rules))}
    result = []
    for layer in layers:
        layer = declared(layer, config)
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
            adapter = None
            if reason is None:
                adapter = build_adapter(cls, layer, options)
                reason = _unknown_features_reason(adapter, layer)
            if reason is not None:
                message = f"layer {layer.path!r} ({layer.spec.summary()}): {reason}"
                if strict and rule.on_unsupported == "error":
                    raise UnsupportedLayerError(f"rule {rule.label!r}: {message}")
                refusals[i].append(message)
                entry.notes.append(f"skipped by rule {rule.label!r}: {reason}")
                continue
            _warn_if_not_equivariant(cls, layer)
            entry.rule = rule
            entry.adapter = adapter
            adapted[i] += 1
            break
    if strict:
        for i, rule in enumerate(config.rules):
            if adapted[i] == 0 and rule.required:
                why = "; ".join(refusals[i][:3]) if refusals[i] else "no layer path/kind matches it"
                missed = [m for m in left_out or [] if any(pattern_matches(p, m.path) for p in rule.target)]
                if missed and not refusals[i]:
                    why += "; not adaptable: " + "; ".join(f"{m.path!r}: {m.reason}" for m in missed[:3])
                raise RuleMatchError(f"rule {rule.label!r} adapts no layer: {why}")
    return result


def _unknown_features_reason(adapter: Adapter, layer: DiscoveredLayer) -> str | None:
    """The refusal of an adapter that needs invariant features on a layer whose features are not known."""
    if layer.spec.irreps_known:
        return None
    what = adapter.needs_invariant_features()
    if what is None:
        return None
    return (
        f"{adapter.name} {what}, which is equivariant on invariant (0e) features only, and this {layer.backend.name} "
        f"layer mixes channels of features it does not state (vectors too); if its input is invariant, declare "
        f"it: invariant_inputs=['{layer.path}']"
    )


def build_adapter(cls: type[Adapter], layer: DiscoveredLayer, options) -> Adapter:
    """``cls`` built for ``layer`` with ``options``, on the device and dtype of the layer's weight."""
    adapter = cls(layer.spec, options)
    weight = layer.backend.weight_of(layer.module)
    return adapter.to(device=weight.device, dtype=weight.dtype)


def _warn_if_not_equivariant(cls: type[Adapter], layer: DiscoveredLayer) -> None:
    if not cls.equivariant:
        warnings.warn(
            f"the {cls.name!r} adapter is NOT equivariant (layer {layer.path!r}): use it only for ablations",
            UserWarning,
            stacklevel=4,
        )


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
            field, what = (
                ("fully_trained_buffers", "parameter or floating-point buffer")
                if buffers
                else ("fully_trained", "parameter")
            )
            raise RuleMatchError(f"{field} pattern {pattern!r} matches no {what} of the model")
        selected += [n for n in hits if n not in selected]
    return selected
