"""Cutting a MACE model down to some of its elements (what mace's ``load_foundations`` does).

A foundation model such as MACE-OFF23 knows ten elements; a fine-tuning set of organic
molecules has three.  Every element-dependent tensor carries rows for all ten: the node
embedding, the skip connections' element operand, the symmetric contractions' per-element
weights, the atomic energies.  :func:`subset_elements` returns a new model for the chosen
elements only.  It gives the same energies and forces on structures of those elements
(only rounding differs), fewer parameters for adapters and full fine-tuning to train
(``mmea-paper`` r16 with ``train_bessel=True`` on MACE-OFF23-medium: 249,242 with ten
elements, 151,354 cut to H, C, O, the papers' count), and smaller saved models.

How: the model is rebuilt from its own config
(``mace.tools.scripts_utils.extract_config_mace_model``) with the fewer elements, and every
tensor is copied from the original.  Tensors with an element axis (an axis of length
``n_old`` that has length ``n_new`` in the rebuilt model) keep the rows of the kept
elements.  The flat weights of e3nn ``o3.Linear`` and tensor-product layers are cut path
by path, and each path is rescaled by ``old path_weight / new path_weight``: e3nn
normalises a path by its fan-in, which counts the one-hot element channels (mace's
``load_foundations`` divides by ``sqrt(n_old / n_new)`` for the same reason).  Nothing is
guessed per interaction class, so every block that mace's config extractor can rebuild is
covered (``RealAgnosticInteractionBlock``, ``RealAgnosticResidualInteractionBlock``, the
non-linear and density blocks, both Clebsch-Gordan conventions); a tensor that cannot be
cut this way raises an error instead of being copied wrongly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from peft_equi.errors import PeftEquiError, UnknownElementError, element_names
from peft_equi.families.mace.loading import instantiate, key_difference, weights_of
from peft_equi.utils.copying import deepcopy_module


def _check_plain_e3nn(model: nn.Module) -> None:
    from peft_equi.core.adapted_layer import AdaptedLayer
    from peft_equi.tuner.model import PeftModel

    if isinstance(model, PeftModel) or any(isinstance(m, AdaptedLayer) for m in model.modules()):
        raise PeftEquiError(
            "subset_elements takes a plain MACE model, not one with adapters: cut the base model first, "
            "then attach adapters (get_peft_model)"
        )
    if any(type(m).__module__.startswith("cuequivariance") for m in model.modules()):
        raise PeftEquiError(
            "subset_elements works on e3nn MACE models: convert with peft_equi.to_e3nn, cut, then peft_equi.to_cueq"
        )


def _weighted_instructions(module: nn.Module) -> list | None:
    """The instructions of an e3nn ``o3.Linear`` / ``TensorProduct`` that own a slice of its flat weight."""
    instructions = getattr(module, "instructions", None)
    if not instructions or not hasattr(instructions[0], "path_shape"):
        return None
    if hasattr(instructions[0], "has_weight"):  # tensor product
        return [ins for ins in instructions if ins.has_weight]
    return [ins for ins in instructions if ins.i_in != -1]  # o3.Linear (i_in == -1: biases)


def _cut_axes(old: torch.Tensor, new_shape: tuple[int, ...], index: torch.Tensor, n_old: int, where: str):
    """``old`` with the kept elements along every axis that shrinks from ``n_old`` to ``len(index)``."""
    if old.dim() != len(new_shape):
        raise PeftEquiError(f"cannot cut {where}: shape {tuple(old.shape)} becomes {new_shape}")
    out = old
    for axis, (a, b) in enumerate(zip(old.shape, new_shape)):
        if a == b:
            continue
        if a != n_old or b != len(index):
            raise PeftEquiError(f"cannot cut {where}: shape {tuple(old.shape)} becomes {new_shape}")
        out = out.index_select(axis, index.to(out.device))
    return out


def _cut_e3nn_weight(old: nn.Module, new: nn.Module, index: torch.Tensor, n_old: int, where: str) -> torch.Tensor:
    """The flat weight of the rebuilt e3nn layer ``new``: ``old``'s, path by path, cut and renormalised."""
    old_paths, new_paths = _weighted_instructions(old), _weighted_instructions(new)
    if old_paths is None or new_paths is None or len(old_paths) != len(new_paths):
        raise PeftEquiError(f"cannot cut {where}: its paths differ after rebuilding")
    weight = old.weight
    lead = weight.shape[:-1]  # e3nn keeps batch dims in front when weights are not shared
    blocks, offset = [], 0
    for a, b in zip(old_paths, new_paths):
        size = math.prod(a.path_shape)
        block = weight[..., offset : offset + size].reshape(*lead, *a.path_shape)
        offset += size
        block = _cut_axes(block, (*lead, *b.path_shape), index, n_old, where)
        # in float64 whatever the model's dtype: a cut in float32 is then the float64 cut rounded, exactly
        rescaled = (block.double() * (a.path_weight / b.path_weight)).to(block.dtype)
        blocks.append(rescaled.reshape(*lead, -1))
    if offset != weight.shape[-1]:
        raise PeftEquiError(f"cannot cut {where}: its paths do not cover its weight")
    return torch.cat(blocks, dim=-1)


def _check_external_weights(old: nn.Module, new: nn.Module, where: str) -> None:
    """Layers fed weights from outside (MACE's conv_tp) must keep their normalisation."""
    old_paths, new_paths = _weighted_instructions(old), _weighted_instructions(new)
    if old_paths is None:
        return
    if len(old_paths) != len(new_paths) or any(
        a.path_shape != b.path_shape or not math.isclose(a.path_weight, b.path_weight, rel_tol=1e-12)
        for a, b in zip(old_paths, new_paths)
    ):
        raise PeftEquiError(f"cannot cut {where}: its externally fed weights depend on the element count")


def _cut_state(old: nn.Module, new: nn.Module, index: torch.Tensor) -> dict[str, torch.Tensor]:
    n_old = len(old.atomic_numbers)
    old_state, new_state = weights_of(old.state_dict()), weights_of(new.state_dict())
    missing, unexpected = key_difference(old_state, new_state)
    if missing or unexpected:
        raise PeftEquiError(
            f"cannot cut {type(old).__name__}: the rebuilt model has other tensors "
            f"(new {missing[:5]}, gone {unexpected[:5]})"
        )
    old_modules = dict(old.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name, module in new.named_modules():
        if _weighted_instructions(module) is None:
            continue
        key = f"{name}.weight" if name else "weight"
        if key in new_state and getattr(module, "internal_weights", True):
            state[key] = _cut_e3nn_weight(old_modules[name], module, index, n_old, name)
        else:
            _check_external_weights(old_modules[name], module, name)
    for key, value in old_state.items():
        if key not in state:
            target = tuple(new_state[key].shape)
            state[key] = value if tuple(value.shape) == target else _cut_axes(value, target, index, n_old, key)
    return state


def subset_elements(model: nn.Module, atomic_numbers: Iterable[int]) -> nn.Module:
    """A new MACE model that knows only ``atomic_numbers`` (a subset of ``model``'s elements).

    Energies and forces on structures made of those elements are those of ``model`` (equal
    to rounding: 1e-10 in float64).  Rescaled weights are computed in float64 and rounded to
    the model's dtype, so that a cut in float32 equals the float64 cut rounded to float32
    (the base fingerprint of adapters compares them exactly).  The embedding rows, the per-element weights of the skip
    connections and symmetric contractions, the atomic energies and the ``atomic_numbers``
    table (z table) keep only the chosen elements, in ``model``'s order.  ``model`` itself
    is not changed; the new model has its dtype, device, train/eval mode and
    ``requires_grad`` flags.

    Cut before attaching adapters: a model with adapters (a ``PeftModel``) is refused,
    since adapter weights on element-dependent layers would have to be cut as well.  The
    model must be an e3nn MACE that ``mace.tools.scripts_utils.extract_config_mace_model``
    can describe (``ScaleShiftMACE``, as every MACE-OFF/MACE-MP file).  Elements the model
    does not know raise :class:`~peft_equi.errors.UnknownElementError`.
    """
    from mace.tools.scripts_utils import extract_config_mace_model

    _check_plain_e3nn(model)
    if not hasattr(model, "atomic_numbers"):
        raise PeftEquiError(f"{type(model).__name__} has no atomic_numbers table: not a MACE model")
    current = [int(z) for z in model.atomic_numbers]
    wanted = {int(z) for z in atomic_numbers}
    unknown = sorted(wanted - set(current))
    if unknown:
        raise UnknownElementError(
            f"the model does not know {element_names(unknown)}; it knows {element_names(current)}"
        )
    if not wanted:
        raise PeftEquiError("subset_elements needs at least one element")
    kept = [z for z in current if z in wanted]
    if kept == current:
        return deepcopy_module(model)

    config = extract_config_mace_model(model)
    if "error" in config:
        raise PeftEquiError(f"cannot cut {type(model).__name__}: {config['error']}")
    positions = [current.index(z) for z in kept]
    index = torch.tensor(positions, dtype=torch.long)
    config["atomic_numbers"] = kept
    config["num_elements"] = len(kept)
    config["atomic_energies"] = config["atomic_energies"][..., positions]
    parameter = next(model.parameters())
    new = instantiate(type(model), config, parameter.dtype)
    state = _cut_state(model, new, index)
    new.load_state_dict({k: v.detach().clone().cpu() for k, v in state.items()}, strict=False)
    for old_block, new_block in zip(model.interactions, new.interactions):
        new_block.avg_num_neighbors = old_block.avg_num_neighbors  # the config holds only the first block's
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in new.named_parameters():
        p.requires_grad_(flags.get(name, p.requires_grad))
    return new.to(parameter.device).train(model.training)
