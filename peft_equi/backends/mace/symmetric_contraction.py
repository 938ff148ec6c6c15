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

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.backend import Backend, copy_into
from peft_equi.core.irreps import Irrep, Irreps, MulIrrep
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerKind, LayerSpec, WeightPath


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
    layer_class = ("mace", "SymmetricContraction")

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

    def adapted_layer_class(self, module: nn.Module) -> type[AdaptedLayer]:
        if all(all(hasattr(c, a) for a in _CONTRACTION_PARTS) for c in module.contractions):
            return AdaptedMaceSymmetricContraction
        return AdaptedLayer  # an unknown Contraction: the generic wrapper (functional_call, eager only)

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


# what AdaptedMaceSymmetricContraction calls on each Contraction (MACE's own ops, in MACE's order)
_CONTRACTION_PARTS = ("graph_opt_main", "contractions_weighting", "contractions_features", "U_tensors", "correlation")


def _slots(module: nn.Module) -> list[nn.Parameter]:
    """Every weight tensor, zeroed ones included, in forward order."""
    return [w for c in module.contractions for w in (c.weights_max, *c.weights)]


class AdaptedMaceSymmetricContraction(AdaptedLayer):
    """MACE's ``SymmetricContraction`` with an adapter, called as ``layer(x, y)`` (TorchScript-compatible).

    With an effective weight it runs MACE's own contraction ops (each ``Contraction``'s
    ``graph_opt_main``, ``contractions_weighting``, ``contractions_features`` and
    ``U_tensors``, in MACE's order) on the canonical weight cut back into the module's
    tensors; weights MACE zeroed keep their (zero) values.
    """

    def __init__(self, base_layer: nn.Module, backend, spec, adapter) -> None:
        super().__init__(base_layer, backend, spec, adapter)
        live = {id(w) for _, _, w in _weights(base_layer)}
        slots = _slots(base_layer)
        self.slot_shapes = [list(w.shape) for w in slots]
        pieces, self.slot_piece = 0, []
        for w in slots:
            self.slot_piece.append(pieces if id(w) in live else -1)  # -1: keeps the module's own (zeroed) tensor
            pieces += id(w) in live
        self.piece_sizes = [w.numel() for _, _, w in _weights(base_layer)]
        starts, start = [], 0  # for _operands: each irrep's slice of the last axis of x
        for block in Irreps(base_layer.irreps_in):
            starts.append([start, block.ir.dim])
            start += block.ir.dim
        self.input_slices = starts

    def _own_slots(self) -> list[torch.Tensor]:
        """Every weight tensor of the module, in forward order."""
        slots: list[torch.Tensor] = []
        for contraction in self.base_layer.contractions:
            slots.append(contraction.weights_max)
            for w in contraction.weights:
                slots.append(w)
        return slots

    def layer_weight(self) -> torch.Tensor:
        slots = self._own_slots()
        live: list[torch.Tensor] = []
        for i, piece in enumerate(self.slot_piece):
            if piece >= 0:
                live.append(slots[i].reshape(-1))
        return torch.cat(live)

    def layer_bias(self) -> torch.Tensor | None:
        return None

    def _contract(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """MACE's ``SymmetricContraction.forward`` with the canonical flat ``weight``."""
        pieces = torch.split(weight, self.piece_sizes)
        slots = self._own_slots()
        for i, piece in enumerate(self.slot_piece):
            if piece >= 0:
                slots[i] = pieces[piece].view(self.slot_shapes[i])
        outs: list[torch.Tensor] = []
        slot = 0
        for contraction in self.base_layer.contractions:
            out = contraction.graph_opt_main(contraction.U_tensors(contraction.correlation), slots[slot], x, y)
            slot += 1
            for i, (contract_weights, contract_features) in enumerate(
                zip(contraction.contractions_weighting, contraction.contractions_features)
            ):
                c_tensor = contract_weights(contraction.U_tensors(contraction.correlation - i - 1), slots[slot], y)
                slot += 1
                c_tensor = c_tensor + out
                out = contract_features(c_tensor, x)
            outs.append(out.view(out.shape[0], -1))
        return torch.cat(outs, dim=-1)

    def _operands(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """``x`` ``(N, channels, sum_l (2l+1))`` as flat ``mul_ir`` features, and the element one-hot ``y``."""
        flat = [x[:, :, s[0] : s[0] + s[1]].reshape(x.shape[0], -1) for s in self.input_slices]
        return [torch.cat(flat, dim=-1), y]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x, y)
        weight, _, output_shift = self.effective_parameters()
        out = self.base_layer(x, y) if weight is None else self._contract(x, y, weight)
        operands: list[torch.Tensor] = []
        if self.adapter.input_dependent:  # (flattening x is a feature-sized op: only when read)
            operands = self._operands(x, y)
        return self.finish(out, output_shift, operands)
