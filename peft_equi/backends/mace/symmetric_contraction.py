"""Backend for MACE's e3nn ``SymmetricContraction`` (``products.*.symmetric_contractions``).

The module holds one ``Contraction`` per output irrep; each owns weights of shape
``(n_elements, n_coupling_paths, channels)``: ``weights_max`` (correlation order nu = nu_max)
and the ParameterList ``weights`` (nu = nu_max - 1, ..., 1).  For node ``i`` of element
``z`` the output channel ``c`` is a polynomial in that channel's features whose
coefficients are ``W[z, :, c]`` contracted with fixed equivariant coupling tensors ``U``:
any value of ``W`` gives an equivariant map, so any weight update does too.

Each weight tensor is one path of the spec (last axis = output channels), named by its
parameter name (``contractions.0.weights_max``, ``contractions.0.weights.1``).  Weights
that MACE zeroed (``EmptyParam``, paths with a vanishing ``U``) are left out.  The module
is called as ``sc(x, node_attrs)`` with ``x`` of shape ``(N, channels, sum_l (2l+1))``;
:meth:`operands` turns ``x`` into flat ``mul_ir`` features for adapters that read inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from peft_equi.backends.base import Backend, copy_into
from peft_equi.irreps import Irrep, Irreps, MulIrrep
from peft_equi.registry import register_backend
from peft_equi.spec import LayerKind, LayerSpec, WeightPath


def _weights(module: nn.Module) -> list[tuple[str, int, nn.Parameter]]:
    """``(parameter name, output block, tensor)`` of every live contraction weight, in spec order."""
    found = []
    for k, contraction in enumerate(module.contractions):
        if not bool(getattr(contraction, "weights_max_zeroed", False)):
            found.append((f"contractions.{k}.weights_max", k, contraction.weights_max))
        for j, weight in enumerate(contraction.weights):
            if not bool(getattr(contraction, f"weights_{j}_zeroed", False)):
                found.append((f"contractions.{k}.weights.{j}", k, weight))
    return found


@register_backend
class MaceSymmetricContraction(Backend):
    """MACE ``SymmetricContraction`` with internal weights (e3nn version, not cuequivariance)."""

    name = "mace.symmetric_contraction"

    def matches(self, module: nn.Module) -> bool:
        contractions = getattr(module, "contractions", None)
        return (
            hasattr(module, "irreps_in")
            and hasattr(module, "irreps_out")
            and isinstance(contractions, nn.ModuleList)
            and len(contractions) == len(Irreps(module.irreps_out))
            and all(
                isinstance(getattr(c, "weights_max", None), nn.Parameter)
                and isinstance(getattr(c, "weights", None), nn.ParameterList)
                for c in contractions
            )
        )

    def describe(self, module: nn.Module) -> LayerSpec:
        paths, offset = [], 0
        for name, k, weight in _weights(module):
            paths.append(WeightPath((0, 1), k, tuple(weight.shape), offset, 1.0, name))
            offset += weight.numel()
        n_elements = module.contractions[0].weights_max.shape[0]
        elements = Irreps([MulIrrep(n_elements, Irrep(0, 1))])
        return LayerSpec(
            LayerKind.CONTRACTION, (Irreps(module.irreps_in), elements), Irreps(module.irreps_out), tuple(paths)
        )

    def weight(self, module: nn.Module) -> torch.Tensor:
        return torch.cat([w.reshape(-1) for _, _, w in _weights(module)])

    def operands(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        x = args[0] if args else kwargs["x"]
        attrs = args[1] if len(args) > 1 else kwargs["y"]
        flat, start = [], 0
        for block in Irreps(module.irreps_in):
            flat.append(x[:, :, start : start + block.ir.dim].reshape(x.shape[0], -1))
            start += block.ir.dim
        return torch.cat(flat, dim=-1), attrs

    def forward(self, module, args, kwargs, weight, bias):
        if weight is None:
            return module(*args, **kwargs)
        return functional_call(module, _split(module, weight), args, kwargs)

    def write(self, module, weight, bias):
        for name, value in _split(module, weight).items():
            copy_into(module.get_parameter(name), value)


def _split(module: nn.Module, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The canonical flat weight cut into the module's weight tensors, by parameter name."""
    weights = _weights(module)
    pieces = torch.split(weight, [w.numel() for _, _, w in weights])
    return {name: piece.reshape(w.shape) for (name, _, w), piece in zip(weights, pieces)}
