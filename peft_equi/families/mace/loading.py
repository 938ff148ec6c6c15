"""Loading and saving MACE models: ``.model`` pickles (e3nn 0.4.4 or 0.6), state dict + config.

Every released MACE-OFF/MACE-MP ``.model`` file is a whole pickled module written under
e3nn 0.4.4.  Two things stop it from working under e3nn 0.6:

* e3nn 0.4.4 pickles the generated code of its ``CodeGenMixin`` modules (``o3.Linear``,
  tensor products, ...) as ``{name: bytes}`` while e3nn 0.6 expects ``{name: (kind, bytes)}``:
  unpickling fails with ``too many values to unpack``.  While loading, the old entries are
  dropped (:func:`legacy_e3nn_codegen_unpickling`).
* the unpickled modules lack attributes e3nn 0.6 code needs, so the model is rebuilt:
  ``type(old)(**extract_config_mace_model(old))`` + ``load_state_dict`` (codegen constants,
  keys containing ``_compiled_main``, are regenerated, not copied).

Unpickling runs code from the file: whole-module files need ``trust_pickle=True``.
:func:`save_mace_state` writes a pickle-free alternative (config JSON + tensors) that loads
with ``weights_only=True``; the callables its config names (model class, interaction
blocks, activations) are imported only when defined in ``mace.modules`` or are one of the
gate activations MACE offers (``mace.modules.gate_dict``: ``torch.nn.functional.silu``,
``torch.tanh``, ``torch.abs``), and the model class must be a MACE ``nn.Module``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_equi.errors import PeftEquiError
from peft_equi.utils.dtype import torch_default_dtype
from peft_equi.utils.safe_load import load_torch_file

STATE_FORMAT = "peft_equi.mace_state.v1"
CODEGEN_MARK = "_compiled_main"  # in the state-dict keys of e3nn's generated-code constants (never copied)


def weights_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` without e3nn's generated-code constants (keys with :data:`CODEGEN_MARK`)."""
    return {k: v for k, v in state_dict.items() if CODEGEN_MARK not in k}


def key_difference(have: Mapping[str, object], want: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """``(keys want has and have lacks, keys have has and want lacks)``, each sorted."""
    return sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())


_ALLOWED_PACKAGES = ("mace.modules",)  # callables in state files: defined in these packages, or activations
_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def legacy_e3nn_codegen_unpickling() -> Iterator[None]:
    """While active, e3nn 0.4.4 ``__codegen__`` pickle state (bare bytes) is dropped instead of failing."""
    from e3nn.util.codegen import _mixin

    cls = _mixin.CodeGenMixin
    with _PATCH_LOCK:
        original = cls.__dict__["__setstate__"]

        def __setstate__(self, state):
            codegen = state.get("__codegen__") if isinstance(state, dict) else None
            if isinstance(codegen, dict):
                state = dict(state)
                state["__codegen__"] = {k: v for k, v in codegen.items() if not isinstance(v, (bytes, bytearray))}
            return original(self, state)

        cls.__setstate__ = __setstate__
        try:
            yield
        finally:
            cls.__setstate__ = original


def _encode(value: Any) -> Any:
    import numpy as np

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if type(value).__name__ == "Irreps":
        return {"__irreps__": str(value)}
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return {"__ndarray__": array.tolist(), "dtype": str(array.dtype)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if callable(value) and hasattr(value, "__module__") and hasattr(value, "__qualname__"):
        return {"__callable__": _callable_name(value)}
    raise TypeError(f"cannot store MACE config value of type {type(value).__name__}: {value!r}")


def _decode(value: Any) -> Any:
    import numpy as np
    from e3nn import o3

    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__irreps__" in value:
        return o3.Irreps(value["__irreps__"])
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"])
    if "__callable__" in value:
        return _resolve(value["__callable__"])
    return {k: _decode(v) for k, v in value.items()}


def _callable_name(value: Any) -> str:
    """``module:qualname``, how a state file names a callable."""
    return f"{value.__module__}:{value.__qualname__}"


def _activations() -> dict[str, Any]:
    """The activations a state file may name, by name: MACE's gates (``mace.modules.gate_dict``).

    Keyed by :func:`_callable_name` (torch's builtins are ``torch:_VariableFunctionsClass.tanh``)
    and by their public names (``torch:tanh``).
    """
    import torch.nn.functional as F

    allowed = {"torch.nn.functional:silu": F.silu, "torch:tanh": torch.tanh, "torch:abs": torch.abs}
    return allowed | {_callable_name(f): f for f in allowed.values()}


def _allowed_module(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _ALLOWED_PACKAGES)


def _resolve(name: str, model_class: bool = False) -> Any:
    """The callable ``module:qualname`` named in a state file, only if defined in MACE or one of its activations.

    Activations are looked up in an explicit list (:func:`_activations`), nothing else of torch
    is reachable.  Other objects must be defined in ``mace.modules`` (``mace.modules.utils:torch.load``
    reaches ``torch.load``, defined in ``torch.serialization``: refused), and a model class must be
    an ``nn.Module`` of ``mace.modules`` (it is called with the file's config).
    """
    module_name, _, qualname = name.partition(":")
    refused = PeftEquiError(f"refusing to import {name!r} named in a model config")
    activation = None if model_class else _activations().get(name)
    if activation is not None:
        return activation
    if not _allowed_module(module_name) or not qualname:
        raise refused
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise refused from None
    defined_in = getattr(obj, "__module__", None) or ""
    if inspect.ismodule(obj) or not callable(obj) or not _allowed_module(defined_in):
        raise refused
    if model_class and not (
        isinstance(obj, type) and issubclass(obj, nn.Module) and defined_in.startswith("mace.modules")
    ):
        raise refused
    return obj


def instantiate(model_class: type, config: dict, dtype: torch.dtype) -> nn.Module:
    """``model_class(**config)`` built in ``dtype`` (random weights), the default dtype left as it was."""
    config = dict(config)
    if isinstance(config.get("atomic_numbers"), torch.Tensor):
        config["atomic_numbers"] = [int(z) for z in config["atomic_numbers"].tolist()]
    with torch_default_dtype(dtype):  # MACE's buffers (U matrices, Bessel weights) take the default dtype
        return model_class(**config).to(dtype)


def model_with_weights(
    model_class: type, config: dict, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> nn.Module:
    """``model_class(**config)`` built in ``dtype`` (default: the weights'), with ``state_dict`` loaded.

    Codegen keys are regenerated, not copied.  Buffers a model computes from its
    hyperparameters (the symmetric contractions' ``U_matrix_*``, the Bessel weights, ...)
    are kept as built when the saved ones are the same values rounded to a lower precision
    (:func:`_rebuilt_buffer`): a float32 file loaded in float64 then computes with exact
    float64 constants instead of float32-rounded ones.  Parameters are the file's values.
    """
    source_dtype = next((t.dtype for t in state_dict.values() if torch.is_floating_point(t)), None)
    model = instantiate(model_class, config, dtype or source_dtype or torch.get_default_dtype())
    source, built = weights_of(state_dict), weights_of(model.state_dict())
    missing, unexpected = key_difference(source, built)
    if missing or unexpected:
        raise PeftEquiError(
            f"weights do not fit the rebuilt {model_class.__name__}: "
            f"missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    buffers = {name for name, _ in model.named_buffers()}
    model.load_state_dict(
        {k: built[k] if k in buffers and _rebuilt_buffer(built[k], v) else v for k, v in source.items()}, strict=False
    )
    return model.eval()


def _rebuilt_buffer(built: torch.Tensor, saved: torch.Tensor) -> bool:
    """Whether ``built`` (computed from the hyperparameters in a wider dtype) is ``saved`` in more precision:
    the same shape, and equal to within a few units of ``saved``'s last place (its computation in its precision)."""
    if not (built.is_floating_point() and saved.is_floating_point()) or built.shape != saved.shape:
        return False
    if torch.finfo(built.dtype).eps >= torch.finfo(saved.dtype).eps:
        return False
    wide, narrow = built.detach().double().cpu(), saved.detach().double().cpu()
    scale = float(narrow.abs().max()) if narrow.numel() else 0.0
    return bool(torch.all((wide - narrow).abs() <= 4 * torch.finfo(saved.dtype).eps * max(scale, 1e-30)))


def rebuild_mace_model(old: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A freshly built model of ``type(old)`` for the installed e3nn/mace, carrying ``old``'s weights (in ``dtype``)."""
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(old)
    if "error" in config:
        raise PeftEquiError(f"cannot rebuild {type(old).__name__}: {config['error']}")
    return model_with_weights(type(old), config, old.state_dict(), dtype)


def save_mace_state(model: nn.Module, path: str | Path) -> None:
    """Save without pickling code: the MACE config (JSON) and the tensors; read with :func:`load_mace_model`."""
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(model)
    if "error" in config:
        raise PeftEquiError(f"cannot save {type(model).__name__}: {config['error']}")
    payload = {
        "format": STATE_FORMAT,
        "model_class": f"{type(model).__module__}:{type(model).__qualname__}",
        "config": json.dumps(_encode(config)),
        "state_dict": {k: v.detach().cpu() for k, v in weights_of(model.state_dict()).items()},
    }
    torch.save(payload, path)


def load_mace_model(
    path: str | Path, *, trust_pickle: bool = False, config: dict | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """Load a MACE model into a module built for the installed e3nn and mace (eval mode, CPU), in ``dtype``
    (default: the file's; see :func:`model_with_weights` for the buffers of a float32 file built in float64).

    ``path`` may hold a whole pickled module (a MACE ``.model`` file, written under e3nn
    0.4.4 or 0.6: needs ``trust_pickle=True``, since unpickling executes code from the
    file), a :func:`save_mace_state` file, or a bare state dict (then pass ``config``, e.g.
    from ``mace.tools.scripts_utils.extract_config_mace_model``; the model class is
    ``ScaleShiftMACE`` unless the config has ``model_class``).
    """
    import mace.modules  # noqa: F401  (mace must be imported before e3nn 0.4.4-era pickles are read)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MACE model file not found: {path}")
    obj = load_torch_file(
        path,
        trust_pickle=trust_pickle,
        what="a whole pickled model (like MACE .model files)",
        trusted_context=legacy_e3nn_codegen_unpickling,
    )
    if isinstance(obj, nn.Module):
        return rebuild_mace_model(obj, dtype)
    if isinstance(obj, dict) and obj.get("format") == STATE_FORMAT:
        try:
            model_class = _resolve(obj["model_class"], model_class=True)
            config = _decode(json.loads(obj["config"]))
        except PeftEquiError as exc:
            raise PeftEquiError(f"{path}: {exc}") from None
        return model_with_weights(model_class, config, obj["state_dict"], dtype)
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if config is None:
            raise PeftEquiError(f"{path} holds a bare state dict: pass config= (extract_config_mace_model's dict)")
        config = dict(config)
        model_class = config.pop("model_class", None)
        if model_class is None:
            from mace.modules import ScaleShiftMACE as model_class
        return model_with_weights(model_class, config, obj, dtype)
    raise PeftEquiError(f"{path}: not a MACE model file (found {type(obj).__name__})")
