"""Moving adapted MACE models between e3nn and cuequivariance, adapters included.

mace-torch's converters (``mace.cli.convert_e3nn_cueq``, ``convert_cueq_e3nn``) rebuild the
model and copy weights by state-dict key; wrapped layers would not match and keep random
weights silently (MACE issue 1540).  So: detach the adapters (keyed by module path), convert
the plain model, attach the same config on the other backend, and load the adapter values.
The cuequivariance backends describe each layer with the same paths, in the same order, under
the same names and in the same weight basis as e3nn (the symmetric contraction's e3nn
coupling basis in both Clebsch-Gordan conventions, ``use_reduced_cg`` or not), so the values
carry over unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.tuner.model import PeftModel, get_peft_model
from peft_equi.tuner.state_dict import set_peft_model_state_dict
from peft_equi.utils.copying import deepcopy_module
from peft_equi.utils.dtype import torch_default_dtype

_CUET_POLYNOMIAL = "cuequivariance_torch.primitives.segmented_polynomial"


def _convert(model: nn.Module, convert) -> nn.Module:
    with torch_default_dtype(None):  # the converters set the default dtype process-wide
        return convert(model)


def _reattach(converted: nn.Module, adapters: dict[str, tuple], active: str) -> PeftModel:
    """Attach each named adapter ``name -> (config, state, trainable)`` to ``converted``, ``active`` active."""
    (first, (config, _, _)), *others = adapters.items()
    model = get_peft_model(converted, config, adapter_name=first)
    for name, (config, _, _) in others:
        model.add_adapter(name, config)
    for name, (_, state, trainable) in adapters.items():
        set_peft_model_state_dict(model, state, name, what=f"the values of adapter {name!r} on the converted model")
        if not trainable:
            model.set_trainable(name, False)
    model.set_adapter(active)
    return model


def _compiled_modules(model: nn.Module) -> dict[int, nn.Module]:
    """Parameter-free compiled modules (``torch.fx`` graphs of e3nn's codegen, cuet's polynomials), by ``id``.

    The copy :func:`_switch` makes is only read by the converter and then dropped, so it
    shares them: deep-copying one recompiles it (most of the time of a conversion).
    """
    return {
        id(m): m
        for m in model.modules()
        if (isinstance(m, torch.fx.GraphModule) or type(m).__module__.startswith(_CUET_POLYNOMIAL))
        and next(m.parameters(), None) is None
    }


def _switch(model: nn.Module | PeftModel, convert) -> nn.Module | PeftModel:
    if not isinstance(model, PeftModel):
        return _convert(model, convert)
    work = deepcopy_module(model, _compiled_modules(model))
    active = work.active_adapter
    adapters = {
        name: (
            config,
            {k: v.detach().clone() for k, v in work.adapter_state_dict(name).items()},
            work.is_trainable(name),
        )
        for name, config in work.peft_config.items()
    }
    # the base values of fully trained tensors go to the converter
    return _reattach(_convert(work.unload(restore_trained=True), convert), adapters, active)


def kernel_report(device: str) -> str:
    """Which cuequivariance kernels run: the fused CUDA ones need ``cuequivariance_ops_torch`` and a GPU."""
    try:
        import cuequivariance_ops_torch  # noqa: F401
    except ImportError:
        return "cuequivariance: cuequivariance_ops_torch is not installed, so its naive (slow) PyTorch path runs"
    if not str(device).startswith("cuda"):
        return f"cuequivariance: device {device} has no fused kernels, so the naive PyTorch path runs"
    return "cuequivariance: fused CUDA kernels (cuequivariance_ops_torch)"


def to_cueq(model: nn.Module | PeftModel, layout: str = "ir_mul", device: str = "cpu") -> nn.Module | PeftModel:
    """The model on cuequivariance (``layout`` ``ir_mul`` or ``mul_ir``); a ``PeftModel`` keeps its adapters."""
    from mace.cli.convert_e3nn_cueq import run

    return _switch(model, lambda m: run(m, device=device, return_model=True, layout=layout))


def to_e3nn(model: nn.Module | PeftModel, device: str = "cpu") -> nn.Module | PeftModel:
    """The model back on e3nn; a ``PeftModel`` keeps its adapters."""
    from mace.cli.convert_cueq_e3nn import run

    return _switch(model, lambda m: run(m, device=device, return_model=True))
