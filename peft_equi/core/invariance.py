"""Proofs that a dense layer reads invariant (``0e``) features, from where it sits in its model.

A dense layer (``torch.nn.Linear``, an MLP layer) mixes the channels of its last axis and
says nothing about its features: the same module is equivariant on ``(atoms, channels)``
invariants and on ``(atoms, 3, channels)`` vectors.  Adapters that read the input or add a
constant need the input to be invariant (:mod:`peft_equi.core.spec`), so discovery asks
the backend for a proof (:meth:`~peft_equi.core.adapted_layer.AdaptedLayer.invariant_input`).  The
proofs here rest on one fact:

    an elementwise function ``phi`` that is neither odd nor even (SiLU, ReLU, sigmoid,
    softplus, ...) is equivariant on ``0e`` features only: on a component of an irrep with
    ``l >= 1`` it would have to be linear, on a ``0o`` pseudo-scalar odd, and mapping ``0o``
    to ``0e`` would make it even.

So, for the model to be equivariant, what such a function reads and what it returns are
``0e``: a dense layer whose output goes (through normalisations and odd or even elementwise
functions) into one, or whose input comes out of one, reads invariant features (for
generic weights).  Odd or even functions (``tanh``, ``abs``) prove nothing: ``0o``
features pass them.  The parity is measured, not assumed: :func:`breaks_parity`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Parameter-free elementwise activations of ``torch.nn`` (what :func:`sequential_proof` may step over or stop at).
ELEMENTWISE = (
    nn.SiLU, nn.ReLU, nn.ReLU6, nn.GELU, nn.Sigmoid, nn.Softplus, nn.ELU, nn.CELU, nn.SELU, nn.LeakyReLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanh, nn.Softsign, nn.Hardtanh, nn.Tanhshrink,
    nn.Softshrink, nn.Hardshrink, nn.Identity,
)  # fmt: skip

_PROBE = torch.tensor([0.3, 0.7, 1.1, 1.9, 2.6], dtype=torch.float64)


def breaks_parity(fn: Callable[[torch.Tensor], torch.Tensor], width: int | None = None) -> bool:
    """Whether ``fn`` is neither odd nor even, measured at a few points (in float64).

    ``width``: the channels ``fn`` expects (a normalisation over the last axis); ``None`` for
    an elementwise function.  A function that fails on the probe proves nothing (``False``).
    """
    x = _PROBE if width is None else torch.linspace(0.3, 2.6, width, dtype=torch.float64)
    try:
        with torch.no_grad():
            plus, minus = fn(x.clone()), fn(-x)
        plus, minus = plus.to(torch.float64), minus.to(torch.float64)
        odd = torch.allclose(minus, -plus, rtol=1e-6, atol=1e-9)
        even = torch.allclose(minus, plus, rtol=1e-6, atol=1e-9)
    except (RuntimeError, TypeError, ValueError):
        return False
    return not (odd or even)


def activation_name(fn: object) -> str:
    """How messages name an activation (a function, or a module such as e3nn's ``normalize2mom``)."""
    inner = getattr(fn, "f", fn)  # e3nn wraps the activation: normalize2mom(f)
    return getattr(inner, "__name__", type(inner).__name__)


def _invariant_only(module: nn.Module) -> tuple[bool, bool]:
    """``(passes, proves)`` for a module next to a dense layer in an ``nn.Sequential``.

    ``passes``: an elementwise activation or a ``LayerNorm`` (equivariant at most on invariants,
    so a chain through it stays invariant); ``proves``: it is one that breaks parity.
    """
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        weight, bias = (None if t is None else t.detach().double() for t in (module.weight, module.bias))
        norm = lambda x: F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)  # noqa: E731
        return True, breaks_parity(norm, module.normalized_shape[0])
    if type(module) in ELEMENTWISE:
        return True, breaks_parity(module)
    return False, False


def siblings(module: nn.Module, ancestors: Sequence[nn.Module]) -> tuple[list[nn.Module], int]:
    """The children of ``module``'s parent (adapted layers as their base layers) and ``module``'s
    position among them; ``([], -1)`` without a parent."""
    from peft_equi.core.adapted_layer import AdaptedLayer

    if not ancestors:
        return [], -1
    children = [c.base_layer if isinstance(c, AdaptedLayer) else c for c in ancestors[-1].children()]
    return children, next((i for i, child in enumerate(children) if child is module), -1)


def sequential_proof(module: nn.Module, ancestors: Sequence[nn.Module]) -> str | None:
    """The proof for a dense layer inside an ``nn.Sequential``: a parity-breaking activation
    (or ``LayerNorm``) before or after it, reached through invariant-only modules; else ``None``."""
    if not ancestors or not isinstance(ancestors[-1], nn.Sequential):
        return None
    siblings_, position = siblings(module, ancestors)
    if position < 0:
        return None
    for direction, neighbours in (("after", siblings_[position + 1 :]), ("before", siblings_[:position][::-1])):
        for neighbour in neighbours:
            passes, proves = _invariant_only(neighbour)
            if proves:
                where = "its output goes into" if direction == "after" else "its input comes out of"
                return f"{where} {type(neighbour).__name__}, which is equivariant on 0e features only"
            if not passes:
                break
    return None
