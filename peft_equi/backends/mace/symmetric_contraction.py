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
the adapted layer turns ``x`` into flat ``mul_ir`` features for adapters that read inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from peft_equi.core.adapted_layer import AdaptedLayer, overwrite
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


# what the adapted forward calls on each Contraction (MACE's own ops, in MACE's order)
_CONTRACTION_PARTS = ("graph_opt_main", "contractions_weighting", "contractions_features", "U_tensors", "correlation")


def _slots(module: nn.Module) -> list[nn.Parameter]:
    """Every weight tensor, zeroed ones included, in forward order."""
    return [w for c in module.contractions for w in (c.weights_max, *c.weights)]


@register_backend
class MaceSymmetricContraction(AdaptedLayer):
    """MACE ``SymmetricContraction`` with internal weights (e3nn version, not cuequivariance).

    Adapted, it is called as ``layer(x, y)`` (TorchScript-compatible).  With an effective weight it
    runs MACE's own contraction ops (each ``Contraction``'s ``graph_opt_main``,
    ``contractions_weighting``, ``contractions_features`` and ``U_tensors``, in MACE's order) on the
    canonical weight cut back into the module's tensors; weights MACE zeroed keep their (zero)
    values.  A ``Contraction`` without those ops (another MACE version) runs through
    ``torch.func.functional_call`` instead: eager only.
    """

    name = "mace.symmetric_contraction"
    layer_class = ("mace", "SymmetricContraction")

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
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

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        paths, offset = [], 0
        for name, k, weight in _weights(module):
            paths.append(WeightPath((0, 1), k, tuple(weight.shape), offset, 1.0, name))
            offset += weight.numel()
        n_elements = module.contractions[0].weights_max.shape[0]
        elements = Irreps([MulIrrep(n_elements, Irrep(0, 1))])
        return LayerSpec(
            LayerKind.CONTRACTION, (Irreps(module.irreps_in), elements), Irreps(module.irreps_out), tuple(paths)
        )

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        self.own_ops = all(all(hasattr(c, a) for a in _CONTRACTION_PARTS) for c in base_layer.contractions)
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

    def _pieces(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The canonical flat ``weight`` cut into every weight tensor of the module, in forward order (zeroed
        ones: the module's own)."""
        pieces = torch.split(weight, self.piece_sizes)
        slots = self._own_slots()
        for i, piece in enumerate(self.slot_piece):
            if piece >= 0:
                slots[i] = pieces[piece].view(self.slot_shapes[i])
        return slots

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        for own, value, piece in zip(self._own_slots(), self._pieces(weight), self.slot_piece):
            if piece >= 0:
                overwrite(own, value)

    def _contract(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """MACE's ``SymmetricContraction.forward`` with the canonical flat ``weight``."""
        slots = self._pieces(weight)
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

    @torch.jit.unused
    def _functional(self, x, y, weight):  # (no annotations: TorchScript reads them as Tensors, unresolved strings fail)
        """The module's own ``forward`` with its weight tensors replaced by the canonical flat ``weight``'s pieces
        (any ``Contraction``; eager only)."""
        live, pieces = _weights(self.base_layer), torch.split(weight, self.piece_sizes)
        replaced = {name: piece.view(w.shape) for (name, _, w), piece in zip(live, pieces)}
        return functional_call(self.base_layer, replaced, (x, y))

    def _operands(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """``x`` ``(N, channels, sum_l (2l+1))`` as flat ``mul_ir`` features, and the element one-hot ``y``."""
        flat = [x[:, :, s[0] : s[0] + s[1]].reshape(x.shape[0], -1) for s in self.input_slices]
        return [torch.cat(flat, dim=-1), y]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x, y)
        weight, _, output_shift = self.effective_parameters()
        if weight is None:
            out = self.base_layer(x, y)
        elif self.own_ops:
            out = self._contract(x, y, weight)
        else:
            out = self._functional(x, y, weight)
        operands: list[torch.Tensor] = []
        if self.adapter.input_dependent:  # (flattening x is a feature-sized op: only when read)
            operands = self._operands(x, y)
        return self.finish(out, output_shift, operands)

    def scripting_refusal(self) -> str | None:
        if not self.own_ops:
            return f"backend {self.name!r}: this MACE version's Contraction lacks {', '.join(_CONTRACTION_PARTS)}"
        return None
