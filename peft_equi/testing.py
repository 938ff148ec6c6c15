"""Test helpers for library authors: equivariance checks under rotations *and* inversion, random irreps.

.. code-block:: python

    >>> import peft_equi
    >>> from e3nn import o3
    >>> from peft_equi.testing import assert_equivariant, randomize_adapters
    >>> peft_model = peft_equi.get_peft_model(o3.Linear("16x0e+8x1o", "8x0e+4x1o"), "elora", rank=2)
    >>> randomize_adapters(peft_model)              # adapters start as the identity: randomise first
    >>> error = assert_equivariant(peft_model, ["16x0e+8x1o"], "8x0e+4x1o")  # raises when not equivariant
    >>> error = assert_equivariant(peft_model.base_model)  # one adapted layer: irreps and layout from its spec

The representation matrices default to e3nn's real Wigner matrices (those of
``D_from_matrix``, which handles improper rotations through parity, computed exactly to
float64 rounding: see :func:`wigner_d`); pass ``rep`` for another basis.  The default
tolerance depends on the dtype of the outputs (:data:`DEFAULT_ATOL`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from peft_equi.core.irreps import Irrep, Irreps, Layout, MulIrrep
from peft_equi.core.spec import LayerKind, LayerSpec

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


@functools.cache
def _generator_eigh(l: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: E741
    """``(frequencies m, eigenvectors V)`` of e3nn's real ``so(3)`` generator ``X = V diag(i m) V^H``."""
    from e3nn import o3

    generator = o3.so3_generators(l)[axis].to(torch.float64)
    # X is real antisymmetric, so iX is Hermitian: eigh is accurate to rounding
    m, v = torch.linalg.eigh(1j * generator.to(torch.complex128))
    return -m, v


def _rotation_exp(l: int, axis: int, angle: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """``exp(angle X_axis)`` for e3nn's generator, by its eigendecomposition."""
    m, v = _generator_eigh(l, axis)
    phases = torch.exp(1j * m * angle.to(torch.float64))
    return ((v * phases) @ v.conj().t()).real


def wigner_d(l: int, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:  # noqa: E741
    """e3nn's ``o3.wigner_D(l, alpha, beta, gamma)`` to float64 rounding.

    e3nn exponentiates its generators with ``torch.matrix_exp``, which on CPU is off by up to
    ~2e-10 for rotation angles in ``[0, 2 pi)``: linear layers do not notice (the same matrix
    acts on both sides), but polynomial layers (tensor products, MACE's contraction) see
    ``D`` fail to be a representation by that much.  The eigendecomposition is exact to rounding.
    """
    return _rotation_exp(l, 1, alpha) @ _rotation_exp(l, 0, beta) @ _rotation_exp(l, 1, gamma)


def e3nn_rep(irreps: Irreps, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal Wigner matrix of ``irreps`` (``mul_ir`` layout) in e3nn's basis.

    The same matrix as e3nn's ``Irreps.D_from_matrix`` (improper rotations through parity),
    computed to float64 rounding (see :func:`wigner_d`).
    """
    from e3nn import o3

    rotation = rotation.to(torch.float64)
    sign = torch.sign(torch.det(rotation))
    alpha, beta, gamma = o3.matrix_to_angles(rotation * sign)
    improper = bool(sign < 0)
    blocks = []
    for block in Irreps(irreps):
        d = wigner_d(block.ir.l, alpha, beta, gamma) * (block.ir.p if improper else 1)
        blocks += [d] * block.mul
    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=torch.float64)


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


#: Default ``atol`` of :func:`assert_equivariant` by the dtype of the checked outputs: float64
#: keeps ~1e-16 relative rounding, so 1e-10 leaves room for sums over thousands of terms of
#: size ~1; float32 keeps ~1e-7, hence 1e-4.  Other dtypes need an explicit ``atol``.
DEFAULT_ATOL: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-4}


def layer_spec(fn: Any) -> LayerSpec | None:
    """The :class:`LayerSpec` behind ``fn``, or ``None``: an adapted layer's, a :class:`PeftModel`
    whose base model is one adapted layer, or a module a backend describes as a whole."""
    from peft_equi.core.adapted_layer import AdaptedLayer
    from peft_equi.tuner.model import PeftModel

    if isinstance(fn, PeftModel):
        fn = fn.base_model
    if isinstance(fn, AdaptedLayer):
        return fn.spec
    if not isinstance(fn, nn.Module):
        return None
    if any(isinstance(m, AdaptedLayer) for m in fn.modules()):
        return None  # a model with adapters inside: not one layer
    from peft_equi.core.plan import discover

    found = [layer for layer in discover(fn) if layer.path == ""]
    return found[0].spec if found else None


def _resolve(
    fn: Any,
    irreps_in: Sequence[Irreps | str | None] | None,
    irreps_out: Sequence[Irreps | str] | Irreps | str | None,
    spec: LayerSpec | None,
    layout: Layout | str | None,
) -> tuple[list[Irreps | str | None], list[Irreps | str], Layout]:
    """Irreps and layout from the arguments, else from ``spec``, else from the layer ``fn`` is.

    ``fn``'s own spec is read only when irreps are missing: given irreps and no ``spec``
    keep the ``mul_ir`` default layout (as before specs were read).
    """
    if spec is None and (irreps_in is None or irreps_out is None):
        spec = layer_spec(fn)
    if spec is None and (irreps_in is None or irreps_out is None):
        raise ValueError(
            "give irreps_in and irreps_out, or spec=LayerSpec, or pass an adapted layer (or a module a "
            f"backend describes) as fn; {fn!r} is none of these"
        )
    irreps_in = list(spec.irreps_in) if irreps_in is None else list(irreps_in)
    irreps_out = spec.irreps_out if irreps_out is None else irreps_out
    irreps_out = [irreps_out] if isinstance(irreps_out, (str, Irreps)) else list(irreps_out)
    layout = Layout(layout) if layout is not None else (spec.layout if spec is not None else Layout.MUL_IR)
    return irreps_in, irreps_out, layout


def _channel_mixing_error(
    fn: Callable[..., Any], spec: LayerSpec, *, batch: int, trials: int, rep: Rep, generator, dtype
) -> tuple[float, torch.dtype]:
    """Equivariance of a layer that mixes the channels of its last axis on features it does not state:
    fed ``(batch, 2l+1, channels)`` features of ``0e``, ``0o``, ``1o``, ``1e`` and ``2e``, it must
    commute with the Wigner matrices acting on the component axis."""
    width = spec.irreps_in[0].num_channels
    worst, out_dtype = 0.0, dtype
    for ir in ("0e", "0o", "1o", "1e", "2e"):
        irrep = Irreps(f"1x{ir}")
        x = torch.randn(batch, irrep.dim, width, generator=generator, dtype=dtype)
        for inversion in (False, True):
            for _ in range(trials):
                d = rep(irrep, random_orthogonal(inversion=inversion, generator=generator)).to(dtype)
                try:
                    out, out_rot = fn(x), fn(torch.einsum("ij,bjc->bic", d, x))
                except Exception as exc:  # a layer that takes (batch, channels) only: nothing here to check with
                    raise ValueError(
                        f"cannot check {type(fn).__name__}: it mixes channels of features its module does not "
                        f"state ({spec.summary()}), and it does not take features with a component axis "
                        f"({type(exc).__name__}: {exc}); give irreps_in and irreps_out"
                    ) from None
                worst = max(worst, (out_rot - torch.einsum("ij,bjc->bic", d.to(out.dtype), out)).abs().max().item())
                out_dtype = out.dtype
    return worst, out_dtype


def _guard_error(fn: Callable[..., Any], spec: LayerSpec, *, batch: int, generator, dtype) -> None:
    """An adapted dense layer whose adapter needs invariant input (proven or declared) must refuse
    ``(batch, 3, channels)`` vectors at run time (:meth:`~peft_equi.core.adapted_layer.AdaptedLayer.check_input`)."""
    x = torch.randn(batch, 3, spec.irreps_in[0].dim, generator=generator, dtype=dtype)
    try:
        fn(x)
    except RuntimeError as exc:
        if "needs invariant (0e) input" in str(exc):
            return
        raise
    raise AssertionError(
        f"{type(fn).__name__}: its adapter needs invariant input, but it took (batch, 3, channels) vectors "
        "without refusing them"
    )


def _adapted_layer(fn: Any) -> Any:
    from peft_equi.core.adapted_layer import AdaptedLayer
    from peft_equi.tuner.model import PeftModel

    fn = fn.base_model if isinstance(fn, PeftModel) else fn
    return fn if isinstance(fn, AdaptedLayer) else None


class EquivarianceCheck(NamedTuple):
    """What :func:`equivariance_check` measured."""

    error: float  #: the largest ``|f(D x) - D f(x)|``
    dtype: torch.dtype  #: the least precise dtype among the checked outputs


def equivariance_check(
    fn: Callable[..., Any],
    irreps_in: Sequence[Irreps | str | None] | None,
    irreps_out: Sequence[Irreps | str] | Irreps | str | None,
    *,
    spec: LayerSpec | None = None,
    args: Sequence[torch.Tensor] | None = None,
    layout: Layout | str | None = None,
    layout_in: Sequence[Layout | str | None] | None = None,
    batch: int = 7,
    trials: int = 2,
    rep: Rep = e3nn_rep,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> EquivarianceCheck:
    """Largest ``|f(D x) - D f(x)|`` over ``trials`` rotations and ``trials`` improper rotations, and the
    least precise dtype among the checked outputs (what :func:`assert_equivariant`'s tolerance follows).

    ``irreps_in`` has one entry per positional argument; ``None`` marks an argument passed
    unchanged (it must be invariant), which then has to be given in ``args``.  Random
    inputs of ``dtype`` (float64) are drawn for the others unless ``args`` provides them.

    ``irreps_in``, ``irreps_out`` and ``layout`` default to those of ``spec``; when irreps
    are missing and no ``spec`` is given, to those of ``fn`` itself if it is an adapted
    layer, a :class:`~peft_equi.PeftModel` of one adapted layer or a module a backend
    describes (``equivariance_error(layer)``).  Explicit values win.

    Read from a layer, the spec is not trusted alone: the layer is called as it is.  A layer
    whose features its module does not state (a dense layer, ``spec.irreps_known`` false) is
    fed ``(batch, 2l+1, channels)`` features of ``0e``, ``0o``, ``1o``, ``1e`` and ``2e`` and
    must commute with the Wigner matrices on the component axis (a ``ValueError`` says so when
    it does not take such features); an adapted dense layer whose adapter needs invariant
    input must refuse ``(batch, 3, channels)`` vectors (``AssertionError`` otherwise); a layer
    that does not take flat features of its spec's irreps raises ``ValueError`` (give
    ``irreps_in``, ``irreps_out`` and ``args``).  ``layout`` (default
    ``mul_ir`` without a spec) is the layout of the outputs and of every input;
    ``layout_in`` gives one layout per argument where the inputs differ (``None``: ``layout``).
    """
    from_layer = irreps_in is None and irreps_out is None
    irreps_in, irreps_out, layout = _resolve(fn, irreps_in, irreps_out, spec, layout)
    layer_spec_ = spec if spec is not None else (layer_spec(fn) if from_layer else None)
    if from_layer and args is None and layer_spec_ is not None:
        if not layer_spec_.irreps_known:
            return _channel_mixing_error(
                fn, layer_spec_, batch=batch, trials=trials, rep=rep, generator=generator, dtype=dtype
            )
        adapted = _adapted_layer(fn)
        needs = adapted is not None and adapted.adapter_enabled and adapted.adapter.needs_invariant_features()
        if needs and layer_spec_.kind is LayerKind.DENSE:  # its input invariant by proof or declaration only
            _guard_error(fn, layer_spec_, batch=batch, generator=generator, dtype=dtype)
    layouts_in = [layout] * len(irreps_in) if layout_in is None else [layout if x is None else x for x in layout_in]
    if len(layouts_in) != len(irreps_in):
        raise ValueError(f"layout_in has {len(layouts_in)} entries for {len(irreps_in)} arguments")
    if args is None:
        if any(i is None for i in irreps_in):
            raise ValueError("arguments with irreps None are passed unchanged: give them in args")
        args = [torch.randn(batch, Irreps(i).dim, generator=generator, dtype=dtype) for i in irreps_in]
        if from_layer:
            try:
                fn(*args)
            except Exception as exc:
                raise ValueError(
                    f"cannot check {type(fn).__name__} from its spec: it does not take flat features "
                    f"{', '.join(map(str, irreps_in))} ({type(exc).__name__}: {exc}); give irreps_in, irreps_out "
                    "and args in the form it takes"
                ) from None
    worst, out_dtype = 0.0, None
    for inversion in (False, True):
        for _ in range(trials):
            rotation = random_orthogonal(inversion=inversion, generator=generator)
            rotated = [
                x if irreps is None else x @ representation(irreps, rotation, lay, rep).to(x.dtype).t()
                for x, irreps, lay in zip(args, irreps_in, layouts_in)
            ]
            outputs = _as_tuple(fn(*args))
            rotated_outputs = _as_tuple(fn(*rotated))
            for out, out_rot, irreps in zip(outputs, rotated_outputs, irreps_out):
                expected = out @ representation(irreps, rotation, layout, rep).to(out.dtype).t()
                worst = max(worst, (out_rot - expected).abs().max().item())
                if out_dtype is None or torch.finfo(out.dtype).eps > torch.finfo(out_dtype).eps:
                    out_dtype = out.dtype
    return EquivarianceCheck(worst, out_dtype or dtype)


def equivariance_error(
    fn: Callable[..., Any],
    irreps_in: Sequence[Irreps | str | None] | None = None,
    irreps_out: Sequence[Irreps | str] | Irreps | str | None = None,
    **kwargs: Any,
) -> float:
    """The error of :func:`equivariance_check` (same arguments): ``max |f(D x) - D f(x)|``."""
    return equivariance_check(fn, irreps_in, irreps_out, **kwargs).error


def assert_equivariant(
    fn: Callable[..., Any],
    irreps_in: Sequence[Irreps | str | None] | None = None,
    irreps_out: Sequence[Irreps | str] | Irreps | str | None = None,
    *,
    atol: float | None = None,
    **kwargs: Any,
) -> float:
    """Raise ``AssertionError`` when the error of :func:`equivariance_check` exceeds ``atol``; return the error.

    Takes the arguments of :func:`equivariance_check`: ``assert_equivariant(adapted_layer)``
    reads the irreps and layout from the layer's spec, ``assert_equivariant(fn, spec=spec)``
    from a :class:`LayerSpec`.  ``atol`` defaults by the dtype of the outputs
    (:data:`DEFAULT_ATOL`: 1e-10 in float64, 1e-4 in float32).  Pytest reports the caller's line.
    """
    __tracebackhide__ = True
    error, dtype = equivariance_check(fn, irreps_in, irreps_out, **kwargs)
    if atol is None:
        if dtype not in DEFAULT_ATOL:
            raise ValueError(f"no default tolerance for {dtype}: pass atol")
        atol = DEFAULT_ATOL[dtype]
    if not error <= atol:
        raise AssertionError(f"not equivariant: max |f(Dx) - D f(x)| = {error:.3e} > {atol:.1e} ({dtype})")
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


def random_irreps(seed: int | random.Random, *, lmax: int = 2, mul_max: int = 4, max_blocks: int = 4) -> Irreps:
    """Random irreps to test a layer on (as e3nn's ``random_irreps``): 1 to ``max_blocks`` blocks,
    each ``mul x (l, p)`` with ``l <= lmax`` and ``p`` either parity drawn uniformly, and
    ``1 <= mul <= mul_max``.  Blocks are neither sorted nor merged: a repeated irrep stays two
    blocks, as in real layers.  ``seed`` is a seed or a :class:`random.Random` to draw from.
    """
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    blocks = rng.randint(1, max_blocks)
    return Irreps(
        MulIrrep(rng.randint(1, mul_max), Irrep(rng.randint(0, lmax), rng.choice((1, -1)))) for _ in range(blocks)
    )


def randomize_adapters(model: nn.Module, std: float = 0.1, generator: torch.Generator | None = None) -> None:
    """Give every trainable parameter of the adapters random values (adapters start as the identity)."""
    from peft_equi.core.adapted_layer import AdaptedLayer

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AdaptedLayer):
                for param in module.adapter.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * std)


def equivariant_adapters() -> list[str]:
    """Sorted names of the registered adapters that keep equivariance: every adapter but ablations
    such as ``conventional`` (``Adapter.equivariant``), i.e. the ones a model's tests should cover."""
    from peft_equi.core.registry import ADAPTERS

    return [name for name in ADAPTERS.names() if ADAPTERS.get(name).equivariant]
