"""Backends, one :class:`~peft_equi.core.adapted_layer.AdaptedLayer` subclass per layer type: each describes
real modules as backend-free layer specs and runs them adapted.

Importing this package registers the built-in backends.  The e3nn ones are duck typed and
import nothing from e3nn, so they also recognise the e3nn copies bundled in
``torch.package`` archives (NequIP ``.nequip.zip`` files).
"""

from peft_equi.backends import torch_linear
from peft_equi.backends.cueq import linear as cueq_linear
from peft_equi.backends.cueq import symmetric_contraction as cueq_symmetric_contraction
from peft_equi.backends.cueq import tensor_product as cueq_tensor_product
from peft_equi.backends.e3nn import fc, linear, tensor_product
from peft_equi.backends.mace import symmetric_contraction
from peft_equi.backends.nequip import scalar_linear
from peft_equi.backends.schnetpack import dense as schnetpack_dense

__all__ = [
    "cueq_linear",
    "cueq_symmetric_contraction",
    "cueq_tensor_product",
    "fc",
    "linear",
    "scalar_linear",
    "schnetpack_dense",
    "symmetric_contraction",
    "tensor_product",
    "torch_linear",
]
