"""Weight layouts several backends share: intermediate :class:`~peft_equi.core.adapted_layer.AdaptedLayer`
classes (not registered) that a backend subclasses, adding its description and ``forward``."""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer, overwrite


class FlatWeightLayer(AdaptedLayer):
    """A layer whose ``weight``, flattened, is the canonical flat weight and that has no bias of its own."""

    def layer_weight(self) -> torch.Tensor:
        return self.base_layer.weight.reshape(-1)

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        overwrite(self.base_layer.weight, weight)


class DenseLayer(AdaptedLayer):
    """A dense layer on invariant features with an optional ``bias`` Parameter (the canonical bias), called as
    ``layer(input)``; its ``weight`` stored as :meth:`stored_weight` says."""

    @classmethod
    def bias_parameter_names(cls, module: nn.Module) -> list[str]:
        return ["bias"] if module.bias is not None else []

    def layer_weight(self) -> torch.Tensor:
        return self.base_layer.weight.reshape(-1)

    def layer_bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def stored_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The flat canonical ``weight`` as the module stores it (default: ``(in, out)``, its own shape)."""
        return weight.reshape(self.base_layer.weight.shape)

    def write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        overwrite(self.base_layer.weight, self.stored_weight(weight))
        if bias is not None:
            overwrite(self.base_layer.bias, bias)
