"""The adapter state dict: its keys (built here and nowhere else) and peft's functions that read and write it.

An adapter's tensors, as :meth:`PeftModel.adapter_state_dict` gives them and
``adapter_model.safetensors`` stores them, are keyed

* ``adapters.<layer path>.<name>``: parameter ``name`` of the adapter on the layer at ``<layer path>``
  (:func:`adapter_key`; a model that is one layer has ``adapters.<name>``);
* ``base.<name>``: the base tensor ``name`` that the adapter trains fully (``fully_trained``, ``fully_trained_buffers``,
  BitFit's layer biases), under its name in the model without adapters (:func:`trained_key`).

:func:`get_peft_model_state_dict` and :func:`set_peft_model_state_dict` are peft's names for
reading and writing that dictionary; writing checks every key, shape, dtype and value first
and changes nothing on a mismatch.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from peft_equi.errors import AdapterLoadError

ADAPTER_PREFIX = "adapters."
TRAINED_PREFIX = "base."
#: The dtypes of saved floating-point adapter tensors (others, e.g. float16, are refused, never cast).
FLOAT_DTYPES = (torch.float32, torch.float64)


class HasAdapterState(Protocol):
    """What the functions here need of a model: :meth:`PeftModel.adapter_state_dict`."""

    def adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]: ...


def adapter_key(path: str, name: str) -> str:
    """The key of adapter tensor ``name`` of the layer at ``path``: ``adapters.<path>.<name>``."""
    return f"{ADAPTER_PREFIX}{path}.{name}" if path else f"{ADAPTER_PREFIX}{name}"


def trained_key(name: str) -> str:
    """The key of the fully trained base tensor ``name``: ``base.<name>``."""
    return TRAINED_PREFIX + name


def trained_names(keys: Any) -> list[str]:
    """The base tensors named by the ``base.<name>`` keys among ``keys``."""
    return [key.removeprefix(TRAINED_PREFIX) for key in keys if key.startswith(TRAINED_PREFIX)]


def get_peft_model_state_dict(
    model: HasAdapterState, state_dict: dict[str, torch.Tensor] | None = None, adapter_name: str = "default"
) -> dict[str, torch.Tensor]:
    """The tensors of adapter ``adapter_name`` of ``model`` (peft's function): its parameters and fully
    trained tensors under the keys of this module, sharing storage with the model.

    ``state_dict``: a full ``model.state_dict()`` to take the values from instead (as peft); only the
    adapter's keys are read from it, under their names in the model.
    """
    own = model.adapter_state_dict(adapter_name)
    if state_dict is None:
        return own
    names = {_storage(t): name for name, t in model.state_dict().items()}  # type: ignore[attr-defined]
    missing = sorted(key for key, t in own.items() if names.get(_storage(t)) not in state_dict)
    if missing:
        raise AdapterLoadError(listing("state_dict lacks the tensors of adapter keys", missing))
    return {key: state_dict[names[_storage(t)]] for key, t in own.items()}


def _storage(tensor: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    return tensor.data_ptr(), tuple(tensor.shape)


def set_peft_model_state_dict(
    model: HasAdapterState,
    peft_model_state_dict: dict[str, torch.Tensor],
    adapter_name: str | None = "default",
    *,
    what: str = "the tensors",
) -> None:
    """Copy ``peft_model_state_dict`` into adapter ``adapter_name`` (``None``: the active one) of ``model``, in place.

    The one way saved values get into a model (saved adapters, checkpoints, conversions): the keys
    are those of :func:`get_peft_model_state_dict`, all of them, with their shapes, float32 or
    float64 (or the exact dtype of a non-floating tensor) and finite; otherwise
    :class:`AdapterLoadError` lists what does not fit (``what`` names the source) and nothing is changed.
    """
    current = model.adapter_state_dict(adapter_name)
    problems = mismatches({k: tuple(v.shape) for k, v in current.items()}, peft_model_state_dict)
    problems += value_problems(current, peft_model_state_dict)
    if problems:
        raise AdapterLoadError(f"{what} do not fit the adapter: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in peft_model_state_dict.items():
            current[key].copy_(value)


def listing(title: str, items: list[str], limit: int = 20) -> str:
    """``title: a, b, c ... (+n more)``."""
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{title}: {', '.join(items[:limit])}{more}"


def mismatches(expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Missing and unexpected keys and shape mismatches of ``tensors`` against ``expected`` shapes, in words."""
    shapes = sorted(
        f"{k} saved {tuple(tensors[k].shape)} vs model {shape}"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    )
    return [
        listing(title, items)
        for title, items in [
            ("missing keys", sorted(k for k in expected if k not in tensors)),
            ("unexpected keys", sorted(k for k in tensors if k not in expected)),
            ("shape mismatches", shapes),
        ]
        if items
    ]


def value_problems(current: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Tensors of another type than the model's (floating ones: float32 or float64) or with non-finite values."""
    dtypes, broken = [], []
    for key, value in tensors.items():
        if key not in current:
            continue
        target = current[key]
        allowed = FLOAT_DTYPES if target.is_floating_point() else (target.dtype,)
        if value.dtype not in allowed:
            dtypes.append(f"{key} ({str(value.dtype).removeprefix('torch.')})")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            broken.append(key)
    allowed_names = " or ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES)
    return [
        listing(title, items, limit=5)
        for title, items in [
            (f"wrong dtypes (adapter tensors are {allowed_names}; nothing is cast)", sorted(dtypes)),
            ("non-finite values in", sorted(broken)),
        ]
        if items
    ]
