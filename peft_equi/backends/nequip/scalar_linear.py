"""Backend for NequIP's ``ScalarLinearLayer`` (radial and readout MLPs).

It computes ``x @ (W * alpha) (+ b)`` with ``W`` stored ``(in, out)`` and ``alpha`` a scalar
buffer (``gain / sqrt(in)``): a dense layer whose path weight is ``alpha``; the bias is
added after the scaling.  Nonlinearities are separate modules, so nothing runs after it.  Its input is proven
invariant inside a NequIP ``ScalarMLP`` (which checks that its field's irreps are ``0e``),
next to a parity-breaking nonlinearity of its ``ScalarMLPFunction`` (an ``nn.Sequential``),
or, failing both, by NequIP's contract: ``ScalarMLPFunction`` is the MLP of invariant features
(NequIP and Allegro feed it radial bases and invariant latents; its ``torch.mm`` takes
``(atoms or edges, channels)`` only).
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.core.adapted_layer import library_base
from peft_equi.core.invariance import sequential_proof
from peft_equi.core.irreps import Irreps
from peft_equi.core.layouts import DenseLayer
from peft_equi.core.registry import register_backend
from peft_equi.core.spec import LayerSpec, dense_spec


@register_backend
class NequipScalarLinear(DenseLayer):
    """``nequip.nn.mlp.ScalarLinearLayer`` (plain ``weight`` Parameter, not a parametrization).  Adapted, it is
    called as ``layer(input)`` (TorchScript-compatible)."""

    name = "nequip.scalar_linear"
    layer_class = ("nequip", "ScalarLinearLayer")

    @classmethod
    def invariant_input(cls, module, ancestors):
        for ancestor in reversed(ancestors):
            field, irreps = getattr(ancestor, "field", None), getattr(ancestor, "irreps_in", None)
            scalar_mlp = hasattr(ancestor, "mlp_module") and isinstance(irreps, dict) and irreps.get(field) is not None
            if scalar_mlp and all(block.ir.is_invariant for block in Irreps(irreps[field])):
                return f"it is in a ScalarMLP of the field {field!r}, whose irreps are {irreps[field]}"
        proof = sequential_proof(module, ancestors)
        if proof is None and any(library_base(type(a), ("nequip", "ScalarMLPFunction")) for a in ancestors):
            proof = "it is in a ScalarMLPFunction, NequIP's MLP of scalar features"
        return proof

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        weight, alpha = getattr(module, "weight", None), getattr(module, "alpha", None)
        return (
            isinstance(weight, nn.Parameter)
            and isinstance(alpha, torch.Tensor)
            and alpha.dim() == 0
            and hasattr(module, "in_features")
            and hasattr(module, "out_features")
            and tuple(weight.shape) == (module.in_features, module.out_features)
            and "bias" in module._parameters
        )

    @classmethod
    def describe(cls, module: nn.Module) -> LayerSpec:
        return dense_spec(
            int(module.in_features), int(module.out_features), float(module.alpha), bias=module.bias is not None
        )

    def __init__(self, base_layer: nn.Module, spec: LayerSpec, adapter) -> None:
        super().__init__(base_layer, spec, adapter)
        self.in_features, self.out_features = int(base_layer.in_features), int(base_layer.out_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # nequip's argument name
        if not self.adapter_enabled:
            return self.base_layer(input)
        self.check_input(input)
        weight, bias, output_shift = self.effective_parameters()
        if weight is None:
            y = self.base_layer(input)
        else:
            scaled = weight.reshape(self.in_features, self.out_features) * self.base_layer.alpha  # nequip's op order
            y = torch.mm(input, scaled) if bias is None else torch.addmm(bias, input, scaled)
        return self.finish(y, output_shift, [input])
