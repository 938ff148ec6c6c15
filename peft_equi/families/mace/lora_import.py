"""Import a model carrying MACE's own LoRA (``mace.modules.lora.inject_lora``) as a ``PeftModel``.

``inject_lora`` wraps layers in ``LoRAO3Linear`` / ``LoRADenseLinear`` / ``LoRAFCLayer``
(each with ``base``, ``lora_A``, ``lora_B``, ``scaling``).  :func:`import_mace_lora`
unwraps them and attaches the ``mace-lora`` preset with the same rank, alpha and A/B
values, so outputs and merged weights are the same as MACE's.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_equi.adapters.lora.adapter import DOWN, UP, down_key, path_key, up_key
from peft_equi.backends.e3nn.linear import E3nnLinear
from peft_equi.errors import PeftEquiError
from peft_equi.tuner.model import PeftModel, get_peft_model
from peft_equi.tuner.state_dict import adapter_key, set_peft_model_state_dict


def _wrappers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        path: m
        for path, m in model.named_modules()
        if all(hasattr(m, a) for a in ("base", "lora_A", "lora_B", "scaling"))
    }


def _rank(wrapper: nn.Module) -> int:
    if hasattr(wrapper, "lora_irreps"):
        return int(wrapper.lora_irreps[0].mul)
    a = wrapper.lora_A
    return int(a.out_features if isinstance(a, nn.Linear) else a.shape[1])


def _factors(wrapper: nn.Module) -> dict[str, torch.Tensor]:
    """Our adapter's state (``lora_A.*``, ``lora_B.*``) from a MACE LoRA wrapper."""
    a, b = wrapper.lora_A, wrapper.lora_B
    if hasattr(wrapper, "lora_irreps"):  # equivariant: A and B are e3nn Linears
        state = {}
        spec_a, spec_b = E3nnLinear.describe(a), E3nnLinear.describe(b)
        for path in spec_a.paths:
            (i_in,) = path.inputs
            state[f"{DOWN}.{down_key((i_in,), spec_a.irreps_out[path.output].ir)}"] = path.block(a.weight)
        for path in spec_b.paths:
            state[f"{UP}.{up_key(path.output)}"] = path.block(b.weight)
        return state
    down, up = f"{DOWN}.{path_key(0)}", f"{UP}.{up_key(0)}"
    if isinstance(a, nn.Linear):  # dense: delta = B.weight @ A.weight in (out, in)
        return {down: a.weight.t(), up: b.weight.t()}
    return {down: a, up: b}  # FC layer: delta = A @ B in (in, out)


def import_mace_lora(model: nn.Module) -> PeftModel:
    """Turn ``model`` (in place) from MACE's LoRA wrappers into a ``PeftModel`` with the same values."""
    wrappers = _wrappers(model)
    if not wrappers:
        raise PeftEquiError("the model has no MACE LoRA layers (LoRAO3Linear, LoRADenseLinear, LoRAFCLayer)")
    settings = {(_rank(w), round(w.scaling * _rank(w), 12)) for w in wrappers.values()}
    if len(settings) != 1:
        raise PeftEquiError(f"MACE LoRA layers with different (rank, alpha): {sorted(settings)}")
    ((rank, alpha),) = settings
    factors = {path: {k: v.detach().clone() for k, v in _factors(w).items()} for path, w in wrappers.items()}
    for path, wrapper in wrappers.items():
        parent_path, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, attr, wrapper.base)
    for param in model.parameters():
        param.requires_grad_(True)  # inject_lora froze the base; a fresh model trains everything
    peft_model = get_peft_model(model, "mace-lora", rank=rank, alpha=alpha)
    layers = peft_model.adapted_layers
    if set(layers) != set(factors):
        raise PeftEquiError(f"mace-lora adapts {sorted(set(layers) ^ set(factors))} differently from MACE's LoRA")
    tensors = {adapter_key(path, name): value for path, state in factors.items() for name, value in state.items()}
    set_peft_model_state_dict(peft_model, tensors, what="MACE's LoRA factors")
    return peft_model
