"""Folding adapters into their layers: the merging part of :class:`~peft_equi.tuner.model.PeftModel`, and
:func:`merge_adapters` for models adapted in place (NequIP checkpoints).

As peft: :meth:`Merging.merge_adapter` writes the active adapter into the base weights and keeps the
wrappers (the layers then run their merged base layer), :meth:`Merging.unmerge_adapter` restores the
weights exactly (from a copy, not by subtracting), and :meth:`Merging.merge_and_unload` merges and
returns the plain model.  ``safe_merge=True`` computes every merged weight first and refuses non-finite
ones before anything is written.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.errors import NotMergeableError
from peft_equi.tuner.named_adapters import replace_module


class Merging:
    """Mixin of :class:`~peft_equi.tuner.model.PeftModel`: ``merge_adapter``, ``unmerge_adapter``,
    ``merge_and_unload`` and ``unload``."""

    @property
    def merged(self) -> bool:
        """Whether the active adapter is merged into the base weights (:meth:`merge_adapter`)."""
        return self.tuner_state.unmerged_values is not None

    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Write the active adapter into the weights of its layers, keeping the wrappers (peft's ``merge_adapter``).

        The layers then compute their base layer, whose weights now hold the adapted ones;
        :meth:`unmerge_adapter` restores the original weights exactly.  Until then the model
        refuses to switch, add, save or merge adapters.  Raises :class:`NotMergeableError` (naming
        every blocking layer) before changing anything when an adapter depends on the input, or,
        with ``safe_merge``, when a merged weight is not finite.
        """
        self.tuner_state.check_usable()
        layers = self.adapted_layers
        check_mergeable(layers, safe_merge=safe_merge)
        self.tuner_state.unmerged_values = {
            path: {name: p.detach().clone() for name, p in layer.base_layer.named_parameters()}
            for path, layer in layers.items()
        }
        for path, layer in layers.items():
            layer.merge(path)
            layer.adapter_enabled = False

    def unmerge_adapter(self) -> None:
        """Restore the weights :meth:`merge_adapter` changed, exactly, and switch the adapter back on."""
        state = self.tuner_state
        if state.unmerged_values is None:
            raise RuntimeError("no adapter is merged: merge_adapter() first")
        with torch.no_grad():
            for path, values in state.unmerged_values.items():
                layer = state.layers[path]
                for name, param in layer.base_layer.named_parameters():
                    param.copy_(values[name])
                layer.adapter_enabled = True
        state.unmerged_values = None

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Fold the active adapter into its layers, remove all adapters and return the plain base model.

        Raises :class:`NotMergeableError` (naming every blocking layer) before changing
        anything when an adapter depends on the input (MMEA, FiLM with conditioning) or, with
        ``safe_merge`` (as peft), when a merged weight is not finite.  Fully trained base
        tensors keep the active adapter's values.
        """
        self.tuner_state.check_usable()
        check_mergeable(self.tuner_state.layers, safe_merge=safe_merge)
        return self._unload(merge=True)

    def unload(self, *, restore_trained: bool = False) -> nn.Module:
        """Remove all adapters without merging and return the base model.  Fully trained base tensors
        keep the active adapter's values, or get their base values back with ``restore_trained``
        (the model as it was before any adapter)."""
        self.tuner_state.check_usable()
        if restore_trained:
            self.tuner_state.swap_trained(self.tuner_state.active, None)
        return self._unload(merge=False)

    def _unload(self, merge: bool) -> nn.Module:
        state = self.tuner_state
        root = self.base_model
        for path, layer in state.layers.items():
            base = layer.merge(path) if merge else layer.base_layer
            if path == "":
                root = base
            else:
                replace_module(root, path, base)
        state.restore_buffers()
        for name, param in root.named_parameters():
            param.requires_grad_(state.original_requires_grad.get(name, True))
        state.layers = {}
        state.stash = {}
        state.unloaded = True
        return root


def check_mergeable(layers: dict[str, AdaptedLayer], *, safe_merge: bool = False) -> None:
    """Raise :class:`NotMergeableError` naming every layer (by path) whose adapter cannot be folded in
    (with ``safe_merge``: also those whose merged weight or bias would not be finite)."""
    by_reason: dict[str, list[str]] = {}
    for path, layer in layers.items():
        reason = layer.merge_blocker()
        if reason is None and safe_merge and layer.adapter_enabled:
            with torch.no_grad():
                merged = [t for t in layer.effective_parameters()[:2] if t is not None]
            if not all(bool(torch.isfinite(t).all()) for t in merged):
                reason = "safe_merge: the merged weights are not finite"
        if reason is not None:
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
        replace_module(model, path, layer.merge(path))
    return model
