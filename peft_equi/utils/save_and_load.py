"""Saving and loading adapters in the peft format: ``adapter_config.json`` + safetensors.

One directory holds one named adapter (:meth:`PeftModel.save_pretrained` puts the adapter
``"default"`` in its directory and the others in subdirectories named after them, as peft).

Only adapter parameters and the tensors the config trains fully are written (never the
frozen base weights, nor backend caches).  Files are written to a temporary name and
renamed, so an interrupted save never leaves a half-written file behind.

Two records in ``adapter_config.json`` are checked on loading:

* ``tensors_sha256``: sha256 of the saved tensors (:func:`tensors_digest`: key, dtype,
  shape and bytes, in key order).  A corrupted or truncated ``adapter_model.safetensors``
  raises :class:`AdapterLoadError` naming the file.
* ``base_fingerprint``: the frozen base tensors the adapters act on, i.e. the weight and
  bias of every adapted layer (named ``<layer>.weight`` / ``<layer>.bias``) in the
  backend-free layout of :mod:`peft_equi.core.spec`, so e3nn and cuequivariance copies of a
  layer agree; tensors the adapter stores itself (BitFit's biases, ``train`` patterns) are
  left out, as loading replaces them.  Canonical form: the values rounded to float32,
  flattened, little-endian bytes; the sha256 of that is compared exactly.  A base loaded in
  float32 or float64 gives the same sha256, and so does a base cut by ``subset_elements`` in
  either precision (the cut computes in float64).  Any other difference, however small,
  raises :class:`BaseMismatchError` naming the tensors, unless ``allow_base_mismatch=True``
  (deliberate transfer to other weights).

Both records are required (:data:`FORMAT_VERSION` 2): an adapter without one of them was edited,
and is refused.

``adapter_config.json`` is validated as a whole (types of every record, the adapter config);
tensors must be float32 or float64 (or the exact dtype of a non-floating tensor) and finite:
nothing is cast from another type, nothing non-finite is loaded or saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from peft_equi.backends.base import Backend
from peft_equi.core.config import PeftConfig
from peft_equi.core.plan import base_tensors
from peft_equi.errors import AdapterLoadError, BaseMismatchError, ConfigError, PeftEquiError, one_line
from peft_equi.utils.files import atomic_write

if TYPE_CHECKING:
    from peft_equi.model import PeftModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 2  # 2: tensors_sha256 and base_fingerprint required
REQUIRED_RECORDS = ("tensors_sha256", "base_fingerprint")
FINGERPRINT_FORM = "float32 little-endian flat bytes of each adapted layer's canonical weight and bias"
#: The dtypes of saved floating-point adapter tensors (others, e.g. float16, are refused, never cast).
FLOAT_DTYPES = (torch.float32, torch.float64)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _FingerprintEntry(_Strict):
    sha256: StrictStr
    numel: StrictInt


class _Fingerprint(_Strict):
    form: StrictStr
    tensors: dict[str, _FingerprintEntry]


class _LayerRecord(_Strict):
    adapter: StrictStr
    backend: StrictStr


class AdapterRecord(_Strict):
    """The records of ``adapter_config.json``, with their types (what :func:`read_adapter` accepts)."""

    format: StrictInt
    peft_equi_version: StrictStr = "?"
    base_model_class: StrictStr | None = None
    config: dict[str, Any]
    layers: dict[str, _LayerRecord] = {}
    tensors_sha256: StrictStr
    base_fingerprint: _Fingerprint


# -- checksums and fingerprints --


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of ``tensors``: for each key in sorted order, ``[key, dtype, shape]`` (JSON) and the raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(json.dumps([key, str(tensor.dtype), list(tensor.shape)]).encode() + b"\0")
        digest.update(_raw_bytes(tensor))
    return digest.hexdigest()


def tensor_fingerprint(tensor: torch.Tensor) -> dict[str, Any]:
    """``{"sha256", "numel"}`` of ``tensor`` in the canonical form: float32, flat, little-endian."""
    values = tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32).contiguous()
    return {"sha256": hashlib.sha256(_raw_bytes(values)).hexdigest(), "numel": values.numel()}


def base_fingerprint(layers: Iterable[tuple[str, nn.Module, Backend]], trained: Iterable[str]) -> dict[str, dict]:
    """Fingerprints of the weight and bias of each ``(path, module, backend)`` layer, except fully trained ones."""
    trained = set(trained)
    out: dict[str, dict] = {}
    with torch.no_grad():
        for path, module, backend in layers:
            prefix = f"{path}." if path else ""
            bias_names = {prefix + n for n in backend.bias_parameter_names(module)}
            weight_names = {prefix + n for n, _ in module.named_parameters()} - bias_names
            if not weight_names & trained:
                out[prefix + "weight"] = tensor_fingerprint(backend.weight(module))
            bias = backend.bias(module)
            if bias is not None and not bias_names & trained:
                out[prefix + "bias"] = tensor_fingerprint(bias)
    return out


def compare_fingerprints(saved: dict[str, dict], current: dict[str, dict]) -> list[str]:
    """The tensors whose canonical sha256 differs (or that only one side has), by name."""
    differ = []
    for name in sorted(saved.keys() | current.keys()):
        if name not in current:
            differ.append(f"{name} (not in this model)")
        elif name not in saved:
            differ.append(f"{name} (not fingerprinted when saved)")
        elif saved[name]["sha256"] != current[name]["sha256"]:
            differ.append(name)
    return differ


# -- saving and loading --


def save_adapter(model: PeftModel, directory: str | Path, adapter_name: str) -> Path:
    """Write adapter ``adapter_name`` of ``model`` into ``directory`` (created if needed)."""
    from peft_equi import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.adapter_state_dict(adapter_name)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise PeftEquiError(
            f"not saving adapter {adapter_name!r} to {directory}: " + _listing("non-finite values in", broken, limit=5)
        )
    layers = {path: model._layers[path] for path, _ in model.adapters(adapter_name)}
    # the base as this adapter sees it: tensors trained by another adapter hold their base values
    with model._trained_values_of(adapter_name):
        fingerprint = base_fingerprint(
            ((path, layer.base_layer, layer.backend) for path, layer in layers.items()),
            [key.removeprefix("base.") for key in tensors if key.startswith("base.")],  # stored: replaced on load
        )
    meta = {
        "format": FORMAT_VERSION,
        "peft_equi_version": __version__,
        "base_model_class": f"{type(model.base_model).__module__}.{type(model.base_model).__qualname__}",
        "config": json.loads(model.peft_config[adapter_name].to_json()),
        "layers": {
            path: {
                "adapter": layer.named_adapter(adapter_name).name,
                "backend": layer.backend.name,
                "spec": layer.spec.describe(),
            }
            for path, layer in layers.items()
        },
        "tensors_sha256": tensors_digest(tensors),
        "base_fingerprint": {"form": FINGERPRINT_FORM, "tensors": fingerprint},
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return directory


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata (checked against :class:`AdapterRecord`) and tensors of a saved adapter; one-line
    :class:`AdapterLoadError` for missing, malformed or corrupted files."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise AdapterLoadError(f"{directory / name} not found: not a saved peft_equi adapter directory")
    config_path = directory / CONFIG_NAME
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterLoadError(f"{config_path} is not valid JSON: {one_line(exc)}") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if type(fmt) is not int or fmt != FORMAT_VERSION:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise AdapterLoadError(
            f"{config_path}: not a peft_equi adapter of format {FORMAT_VERSION} (format {fmt!r}, keys {keys})"
        )
    missing = [key for key in REQUIRED_RECORDS if not meta.get(key)]
    if missing:
        raise AdapterLoadError(
            f"{config_path}: format {FORMAT_VERSION} adapter without {' and '.join(missing)}: "
            "the file was edited after saving; refused"
        )
    try:
        AdapterRecord.model_validate(meta)
    except ValidationError as exc:
        raise AdapterLoadError(f"{config_path}: malformed adapter record: {ConfigError.from_validation(exc)}") from None
    weights = directory / WEIGHTS_NAME
    try:
        with safe_open(weights, framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # SafetensorError, OSError, ...: truncated or not a safetensors file
        raise AdapterLoadError(
            f"{weights}: cannot read the adapter tensors, the file is corrupted or truncated ({one_line(exc)})"
        ) from None
    if tensors_digest(tensors) != meta["tensors_sha256"]:
        raise AdapterLoadError(
            f"{weights}: the tensors do not match the sha256 recorded in {CONFIG_NAME}: "
            "the file is corrupted or was changed after saving"
        )
    return meta, tensors


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{title}: {', '.join(items[:limit])}{more}"


def _check_base(meta: dict, current: dict[str, dict], directory: Path, allow_base_mismatch: bool) -> None:
    differ = compare_fingerprints(meta["base_fingerprint"]["tensors"], current)
    if not differ:
        return
    message = f"adapter in {directory} was trained on other base weights: " + _listing(
        f"{len(differ)} of {len(current)} fingerprinted base tensors differ", differ, limit=8
    )
    if not allow_base_mismatch:
        raise BaseMismatchError(
            f"{message} (to load it anyway, e.g. for a deliberate transfer: allow_base_mismatch=True, "
            "--allow-base-mismatch)"
        )
    logger.warning("%s; loaded anyway (allow_base_mismatch)", message)


def adapter_config(meta: dict, directory: Path) -> PeftConfig:
    """The :class:`PeftConfig` recorded in an adapter's metadata; invalid, a one-line :class:`AdapterLoadError`."""
    try:
        return PeftConfig.model_validate(meta["config"])
    except (ValidationError, ValueError) as exc:
        problem = ConfigError.from_validation(exc) if isinstance(exc, ValidationError) else one_line(exc)
        raise AdapterLoadError(f"{directory / CONFIG_NAME}: invalid adapter config: {problem}") from None


def adapter_key(path: str, name: str) -> str:
    """The key of adapter tensor ``name`` of the layer at ``path``: ``adapters.<path>.<name>``."""
    return f"adapters.{path}.{name}" if path else f"adapters.{name}"


def set_adapter_tensors(
    model: PeftModel, tensors: dict[str, torch.Tensor], adapter_name: str | None = None, *, what: str = "the tensors"
) -> None:
    """Copy ``tensors`` into adapter ``adapter_name`` (default: the active one) of ``model``, in place.

    The one way saved values get into a model (saved adapters, checkpoints, conversions): keys
    are those of :meth:`PeftModel.adapter_state_dict` (``adapters.<path>.<name>`` and
    ``base.<name>``), all of them, with their shapes; otherwise :class:`AdapterLoadError`
    lists what does not fit (``what`` names the source) and nothing is changed.
    """
    current = model.adapter_state_dict(adapter_name)
    problems = _mismatches({k: tuple(v.shape) for k, v in current.items()}, tensors)
    problems += _value_problems(current, tensors)
    if problems:
        raise AdapterLoadError(f"{what} do not fit the adapter: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in tensors.items():
            current[key].copy_(value)


def _value_problems(current: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> list[str]:
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
        _listing(title, items, limit=5)
        for title, items in [
            (f"wrong dtypes (adapter tensors are {allowed_names}; nothing is cast)", sorted(dtypes)),
            ("non-finite values in", sorted(broken)),
        ]
        if items
    ]


def _mismatches(expected: dict[str, tuple[int, ...]], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Missing and unexpected keys and shape mismatches of ``tensors`` against ``expected`` shapes, in words."""
    shapes = sorted(
        f"{k} saved {tuple(tensors[k].shape)} vs model {shape}"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    )
    return [
        _listing(title, items)
        for title, items in [
            ("missing keys", sorted(k for k in expected if k not in tensors)),
            ("unexpected keys", sorted(k for k in tensors if k not in expected)),
            ("shape mismatches", shapes),
        ]
        if items
    ]


def _expected_shapes(base_model: nn.Module, planned: dict[str, Any], trained: list[str]) -> dict[str, tuple[int, ...]]:
    """The keys and shapes an adapter of these layers (``path -> adapter``) and trained tensors saves."""
    expected = {
        adapter_key(path, name): tuple(tensor.shape)
        for path, adapter in planned.items()
        for name, tensor in adapter.state_dict().items()
    }
    owners = base_tensors(base_model, buffers=True)
    for name in trained:
        owner, attr = owners[name]
        expected[f"base.{name}"] = tuple(getattr(owner, attr).shape)
    return expected


def load_adapter(
    model: nn.Module | PeftModel,
    directory: str | Path,
    *,
    adapter_name: str = "default",
    is_trainable: bool = False,
    allow_base_mismatch: bool = False,
) -> PeftModel:
    """Attach the adapter saved in ``directory`` as ``adapter_name`` and load its values.

    ``model`` is a base model (a :class:`PeftModel` is made of it, with this adapter active:
    :meth:`PeftModel.from_pretrained`) or a :class:`PeftModel` (the adapter is added,
    inactive: :meth:`PeftModel.load_adapter`).  Unless ``is_trainable``, the adapter is
    frozen and the model put in ``eval()`` mode, as in peft.

    The saved tensors are checked against the adapters the config builds on this model
    before anything is attached; missing or unexpected keys and shape mismatches are listed.
    The file's checksum and the base fingerprint (the weights of the adapted layers when
    the adapter was saved) are checked too: a base with other weights raises
    :class:`~peft_equi.errors.BaseMismatchError` naming the tensors that differ, unless
    ``allow_base_mismatch`` (then a warning is logged).
    """
    from peft_equi.core.plan import assign, discover
    from peft_equi.model import PeftModel, plan_layers
    from peft_equi.named_adapters import check_name, trained_tensor_names

    directory = Path(directory)
    existing = model if isinstance(model, PeftModel) else None
    check_name(adapter_name, existing.peft_config if existing is not None else ())
    meta, tensors = read_adapter(directory)
    config = adapter_config(meta, directory)
    base_model = model if existing is None else existing.base_model
    assignments = assign(discover(base_model), config) if existing is not None else plan_layers(model, config)
    planned = {a.layer.path: a.adapter for a in assignments if a.adapter is not None}
    trained = trained_tensor_names(base_model, config, assignments)
    saved_layers = set(meta.get("layers", {}))
    problems = [
        _listing(title, items)
        for title, items in [
            ("layers adapted when saved but not now", sorted(saved_layers - set(planned))),
            ("layers adapted now but not when saved", sorted(set(planned) - saved_layers)),
        ]
        if items
    ] + _mismatches(_expected_shapes(base_model, planned, trained), tensors)
    if problems:
        raise AdapterLoadError(f"adapter in {directory} does not fit this model:\n  " + "\n  ".join(problems))
    # the base as this adapter will see it: tensors another adapter trains hold their base values
    with contextlib.nullcontext() if existing is None else existing._trained_values_of(None):
        layers = ((a.layer.path, a.layer.module, a.layer.backend) for a in assignments if a.adapter is not None)
        _check_base(meta, base_fingerprint(layers, trained), directory, allow_base_mismatch)
    if existing is None:
        peft_model = PeftModel(model, config, assignments, adapter_name)
    else:
        peft_model = existing
        peft_model._inject(adapter_name, config, assignments)
    set_adapter_tensors(peft_model, tensors, adapter_name, what=f"the tensors in {directory}")
    peft_model._set_trainable(adapter_name, is_trainable)
    if not is_trainable:
        peft_model.eval()
    return peft_model
