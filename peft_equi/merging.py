"""Folding adapters into their layers: the merging part of :class:`~peft_equi.model.PeftModel`, and
:func:`merge_adapters` for models adapted in place (NequIP checkpoints)."""

from __future__ import annotations

from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.errors import NotMergeableError
from peft_equi.named_adapters import replace_module, to_buffer


class Merging:
    """Mixin of :class:`~peft_equi.model.PeftModel`: ``merge_and_unload`` and ``unload``."""

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
                replace_module(root, path, base)
        for name, persistent in self._trained_buffers.items():
            to_buffer(*self._trained[name], persistent)
        for name, param in root.named_parameters():
            param.requires_grad_(self._original_requires_grad.get(name, True))
        self._layers = {}
        self._stash = {}
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
        replace_module(model, path, layer.merge(path))
    return model
