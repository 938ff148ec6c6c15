"""Test helpers for library authors: equivariance checks under rotations *and* inversion.

.. code-block:: python

    from peft_equi.testing import assert_equivariant, randomize_adapters
    randomize_adapters(peft_model)              # adapters start as the identity: randomise first
    assert_equivariant(peft_model, ["16x0e+8x1o"], "8x0e+4x1o")

The representation matrices default to e3nn's real Wigner matrices (``D_from_matrix``,
which handles improper rotations through parity); pass ``rep`` for another basis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from peft_equi.core.irreps import Irreps, Layout

Rep = Callable[[Irreps, torch.Tensor], torch.Tensor]


def random_orthogonal(
    *, inversion: bool, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A random rotation matrix (Haar), times ``-1`` when ``inversion`` (an improper rotation)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q = -q
    return -q if inversion else q


def e3nn_rep(irreps: Irreps, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal Wigner matrix of ``irreps`` (``mul_ir`` layout) in e3nn's basis."""
    from e3nn import o3

    return o3.Irreps(str(irreps)).D_from_matrix(rotation)


def layout_permutation(irreps: Irreps, layout: Layout | str) -> torch.Tensor:
    """Index ``p`` with ``x_layout = x_mul_ir[..., p]``."""
    layout = Layout(layout)
    index, start = [], 0
    for block in irreps:
        positions = torch.arange(start, start + block.dim).reshape(block.mul, block.ir.dim)
        index.append((positions if layout is Layout.MUL_IR else positions.t()).reshape(-1))
        start += block.dim
    return torch.cat(index) if index else torch.zeros(0, dtype=torch.long)


def representation(irreps: Irreps | str, rotation: torch.Tensor, layout: Layout | str, rep: Rep) -> torch.Tensor:
    """``D`` acting on flat features of ``irreps`` in ``layout``: ``x -> x @ D.T``."""
    irreps = Irreps(irreps)
    d = rep(irreps, rotation).to(rotation.dtype)
    p = layout_permutation(irreps, layout)
    return d[p][:, p]


def _as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def equivariance_error(
    fn: Callable[..., Any],
    irreps_in: Sequence[Irreps | str | None],
    irreps_out: Sequence[Irreps | str] | Irreps | str,
    *,
    args: Sequence[torch.Tensor] | None = None,
    layout: Layout | str = Layout.MUL_IR,
    batch: int = 7,
    trials: int = 2,
    rep: Rep = e3nn_rep,
    generator: torch.Generator | None = None,
) -> float:
    """Largest ``|f(D x) - D f(x)|`` over ``trials`` rotations and ``trials`` improper rotations.

    ``irreps_in`` has one entry per positional argument; ``None`` marks an argument passed
    unchanged (it must be invariant), which then has to be given in ``args``.  Random
    float64 inputs are drawn for the others unless ``args`` provides them.
    """
    irreps_out = [irreps_out] if isinstance(irreps_out, (str, Irreps)) else list(irreps_out)
    if args is None:
        if any(i is None for i in irreps_in):
            raise ValueError("arguments with irreps None are passed unchanged: give them in args")
        args = [torch.randn(batch, Irreps(i).dim, generator=generator, dtype=torch.float64) for i in irreps_in]
    worst = 0.0
    for inversion in (False, True):
        for _ in range(trials):
            rotation = random_orthogonal(inversion=inversion, generator=generator)
            rotated = [
                x if irreps is None else x @ representation(irreps, rotation, layout, rep).t()
                for x, irreps in zip(args, irreps_in)
            ]
            outputs = _as_tuple(fn(*args))
            rotated_outputs = _as_tuple(fn(*rotated))
            for out, out_rot, irreps in zip(outputs, rotated_outputs, irreps_out):
                expected = out @ representation(irreps, rotation, layout, rep).t()
                worst = max(worst, (out_rot - expected).abs().max().item())
    return worst


def assert_equivariant(
    fn: Callable[..., Any],
    irreps_in: Sequence[Irreps | str | None],
    irreps_out: Sequence[Irreps | str] | Irreps | str,
    *,
    atol: float = 1e-10,
    **kwargs: Any,
) -> float:
    """Raise ``AssertionError`` when :func:`equivariance_error` exceeds ``atol``; return the error."""
    error = equivariance_error(fn, irreps_in, irreps_out, **kwargs)
    if not error <= atol:
        raise AssertionError(f"not equivariant: max |f(Dx) - D f(x)| = {error:.3e} > {atol:.1e}")
    return error


def energy_forces_equivariance_error(
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    positions: torch.Tensor,
    *,
    trials: int = 2,
    inversion: bool = True,
    generator: torch.Generator | None = None,
) -> float:
    """For an interatomic potential ``fn(positions) -> (energy, forces)``: the largest of
    ``|E(x R^T) - E(x)|`` and ``|F(x R^T) - F(x) R^T|`` over ``trials`` rotations and, with
    ``inversion``, ``trials`` improper rotations (rotation times inversion; leave it off for
    models that are only SO(3)-equivariant, such as SevenNet-0)."""
    energy, forces = fn(positions)
    worst = 0.0
    for improper in (False, True) if inversion else (False,):
        for _ in range(trials):
            rotation = random_orthogonal(inversion=improper, generator=generator, dtype=positions.dtype)
            energy_rot, forces_rot = fn(positions @ rotation.t())
            worst = max(
                worst,
                (energy_rot - energy).abs().max().item(),
                (forces_rot - forces @ rotation.t()).abs().max().item(),
            )
    return worst


def randomize_adapters(model: nn.Module, std: float = 0.1, generator: torch.Generator | None = None) -> None:
    """Give every trainable parameter of the adapters random values (adapters start as the identity)."""
    from peft_equi.core.adapted_layer import AdaptedLayer

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AdaptedLayer):
                for param in module.adapter.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)
