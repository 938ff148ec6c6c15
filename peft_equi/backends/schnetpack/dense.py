"""Backend for schnetpack's ``Dense``: ``activation(F.linear(x, W, b))``, a ``torch.nn.Linear`` subclass.

schnetpack 2.x's ``Dense.forward`` is ``y = F.linear(input, self.weight, self.bias)`` then
``self.activation(y)``; the adapted layer runs the same two steps with the effective weight
and bias, so adapters see the pre-activation (as on e3nn's ``FullyConnectedNet`` layers).
Recognised by class (``schnetpack``'s ``Dense`` in the MRO, its ``forward`` not overridden),
without importing schnetpack.  PaiNN and SO3net apply ``Dense`` and ``nn.Linear`` to
``(atoms, 3, channels)`` vectors and ``(atoms, (l+1)^2, channels)`` features as well as to
invariants, so a ``Dense``'s input is invariant only where its own activation, or that of the
``Dense`` before it in an ``nn.Sequential``, breaks parity (:mod:`peft_equi.core.invariance`).
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.backends.torch_linear import TorchLinear
from peft_equi.core.adapted_layer import common_refusal, library_base
from peft_equi.core.invariance import activation_name, breaks_parity, sequential_proof, siblings
from peft_equi.core.registry import register_backend


@register_backend
class SchnetpackDense(TorchLinear):
    """``schnetpack.nn.Dense``: ``nn.Linear`` followed by ``activation`` (``nn.Identity`` when none).
    Adapted: the adapted linear part, then the layer's activation."""

    name = "schnetpack.dense"
    layer_class = ("schnetpack", "Dense")

    @classmethod
    def _is_dense(cls, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and library_base(type(module), cls.layer_class) is not None

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        base = library_base(type(module), cls.layer_class) if isinstance(module, nn.Linear) else None
        return base is not None and type(module).forward is base.forward and hasattr(module, "activation")

    @classmethod
    def refusal(cls, module: nn.Module) -> str | None:
        return common_refusal(module, cls.layer_class) if cls._is_dense(module) else None

    @classmethod
    def invariant_input(cls, module, ancestors):
        if breaks_parity(module.activation):
            return f"its output goes into its activation {activation_name(module.activation)}, equivariant on 0e only"
        if ancestors and isinstance(ancestors[-1], nn.Sequential):
            layers, position = siblings(module, ancestors)
            previous = layers[position - 1] if position > 0 else None
            if cls._is_dense(previous) and breaks_parity(previous.activation):
                name = activation_name(previous.activation)
                return f"its input comes out of the previous Dense's activation {name}, equivariant on 0e only"
        return sequential_proof(module, ancestors)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.adapter_enabled:
            return self.base_layer(input)
        return self.base_layer.activation(self.adapted(input))
