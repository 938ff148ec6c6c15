"""The files of a saved adapter, in the peft format: ``adapter_config.json`` + ``adapter_model.safetensors``.

One directory holds one named adapter (:meth:`PeftModel.save_pretrained` puts the adapter
``"default"`` in its directory and the others in subdirectories named after them, as peft).
This module reads, writes and checks the files; :class:`~peft_equi.tuner.model.PeftModel`
gathers and applies the tensors (keyed as :mod:`peft_equi.tuner.state_dict` says).

Only adapter parameters and the tensors the config trains fully are written (never the
frozen base weights, nor backend caches).  Files are written to a temporary name and
renamed, so an interrupted save never leaves a half-written file behind.

Three records in ``adapter_config.json`` are checked on loading:

* ``tensors_sha256``: sha256 of the saved tensors (:func:`tensors_digest`: key, dtype,
  shape and bytes, in key order).  A corrupted or truncated ``adapter_model.safetensors``
  raises :class:`AdapterLoadError` naming the file.
* ``config_sha256``: sha256 of the ``config`` record (:func:`config_digest`), the part of
  ``adapter_config.json`` that decides the adapted model's outputs (adapters, rules and their
  options: ``alpha``, ``rank``, ...).  A config edited after saving raises :class:`AdapterLoadError`.
  The other records (``peft_equi_version``, ``base_model_class``, the per-layer ``adapter`` and
  ``backend``) are informational; only the saved layer paths are compared.
* ``base_fingerprint``: the frozen base tensors the adapters act on, i.e. the weight and
  bias of every adapted layer (named ``<layer>.weight`` / ``<layer>.bias``) in the
  backend-free layout of :mod:`peft_equi.core.spec`, so e3nn and cuequivariance copies of a
  layer agree; tensors the adapter stores itself (BitFit's biases, ``fully_trained`` patterns) are
  left out, as loading replaces them.  Canonical form: the values rounded to float32,
  flattened, little-endian bytes; the sha256 of that is compared exactly.  A base loaded in
  float32 or float64 gives the same sha256, and so does a base cut by ``subset_elements`` in
  either precision (the cut computes in float64).  Any other difference, however small,
  raises :class:`BaseMismatchError` naming the tensors, unless ``allow_base_mismatch=True``
  (deliberate transfer to other weights).

The records a format requires (:data:`REQUIRED_RECORDS`; :data:`FORMAT_VERSION` is written) must be
there: an adapter without one of them was edited, and is refused.  Format 2 adapters, saved
before ``config_sha256`` existed, load with their tensors and base checked but not their config.

``adapter_config.json`` is validated as a whole (types of every record, the adapter config);
tensors must be float32 or float64 (or the exact dtype of a non-floating tensor) and finite:
nothing is cast from another type, nothing non-finite is loaded or saved.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.core.config import PeftConfig
from peft_equi.errors import AdapterLoadError, BaseMismatchError, ConfigError, PeftEquiError, one_line
from peft_equi.tuner.state_dict import listing
from peft_equi.utils.files import atomic_write

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 3  # 3: config_sha256 too
#: The records each readable format must carry (2: tensors and base; 3: the config as well).
REQUIRED_RECORDS = {
    2: ("tensors_sha256", "base_fingerprint"),
    3: ("tensors_sha256", "base_fingerprint", "config_sha256"),
}
FINGERPRINT_FORM = "float32 little-endian flat bytes of each adapted layer's canonical weight and bias"


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
    config_sha256: StrictStr | None = None
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


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of an adapter's ``config`` record: its JSON with sorted keys and no spaces (floats as ``repr``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tensor_fingerprint(tensor: torch.Tensor) -> dict[str, Any]:
    """``{"sha256", "numel"}`` of ``tensor`` in the canonical form: float32, flat, little-endian."""
    values = tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32).contiguous()
    return {"sha256": hashlib.sha256(_raw_bytes(values)).hexdigest(), "numel": values.numel()}


def base_fingerprint(
    layers: Iterable[tuple[str, nn.Module, type[AdaptedLayer]]], trained: Iterable[str]
) -> dict[str, dict]:
    """Fingerprints of the weight and bias of each ``(path, module, backend)`` layer, except fully trained ones."""
    trained = set(trained)
    out: dict[str, dict] = {}
    with torch.no_grad():
        for path, module, backend in layers:
            prefix = f"{path}." if path else ""
            bias_names = {prefix + n for n in backend.bias_parameter_names(module)}
            weight_names = {prefix + n for n, _ in module.named_parameters()} - bias_names
            if not weight_names & trained:
                out[prefix + "weight"] = tensor_fingerprint(backend.weight_of(module))
            bias = backend.bias_of(module)
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


def write_adapter(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` into ``directory`` (created if needed), each file atomically, with
    :data:`FORMAT_VERSION`, :func:`tensors_digest` and :func:`config_digest` added; non-finite values are refused."""
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise PeftEquiError(f"not saving the adapter to {directory}: " + listing("non-finite values in", broken, 5))
    meta = {
        "format": FORMAT_VERSION,
        **meta,
        "tensors_sha256": tensors_digest(tensors),
        "config_sha256": config_digest(meta["config"]),
    }
    directory.mkdir(parents=True, exist_ok=True)
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
    if type(fmt) is not int or fmt not in REQUIRED_RECORDS:
        keys = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise AdapterLoadError(
            f"{config_path}: not a peft_equi adapter of format {FORMAT_VERSION} (format {fmt!r}, keys {keys})"
        )
    missing = [key for key in REQUIRED_RECORDS[fmt] if not meta.get(key)]
    if missing:
        raise AdapterLoadError(
            f"{config_path}: format {fmt} adapter without {' and '.join(missing)}: "
            "the file was edited after saving; refused"
        )
    try:
        AdapterRecord.model_validate(meta)
    except ValidationError as exc:
        raise AdapterLoadError(f"{config_path}: malformed adapter record: {ConfigError.from_validation(exc)}") from None
    if meta.get("config_sha256") and config_digest(meta["config"]) != meta["config_sha256"]:
        raise AdapterLoadError(
            f"{config_path}: the adapter config does not match its recorded config_sha256: "
            "the file was edited after saving; refused"
        )
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


def check_base(meta: dict, current: dict[str, dict], directory: Path, allow_base_mismatch: bool) -> None:
    """Compare the recorded base fingerprint with ``current``: :class:`BaseMismatchError` naming the tensors
    that differ, or a logged warning with ``allow_base_mismatch``."""
    differ = compare_fingerprints(meta["base_fingerprint"]["tensors"], current)
    if not differ:
        return
    message = f"adapter in {directory} was trained on other base weights: " + listing(
        f"{len(differ)} of {len(current)} fingerprinted base tensors differ", differ, limit=8
    )
    if not allow_base_mismatch:
        raise BaseMismatchError(
            f"{message} (to load it anyway, e.g. for a deliberate transfer: allow_base_mismatch=True, "
            "--allow-base-mismatch)"
        )
    logger.warning("%s; loaded anyway (allow_base_mismatch)", message)


#: PeftConfig fields renamed since adapters of the current format were first saved: old name -> new
RENAMED_FIELDS = {"train": "fully_trained", "train_buffers": "fully_trained_buffers"}


def _current_names(config: object) -> object:
    """``config`` with the fields of :data:`RENAMED_FIELDS` under their current names."""
    if not isinstance(config, dict):
        return config  # validation says what is wrong with it
    for old, new in RENAMED_FIELDS.items():
        if old in config and new in config:
            raise ValueError(f"both {old!r} and its current name {new!r} are given")
    return {RENAMED_FIELDS.get(key, key): value for key, value in config.items()}


def adapter_config(meta: dict, directory: Path) -> PeftConfig:
    """The :class:`PeftConfig` recorded in an adapter's metadata (fields saved under an earlier name,
    :data:`RENAMED_FIELDS`, are read under the current one); invalid, a one-line :class:`AdapterLoadError`."""
    try:
        return PeftConfig.model_validate(_current_names(meta["config"]))
    except (ValidationError, ValueError) as exc:
        problem = ConfigError.from_validation(exc) if isinstance(exc, ValidationError) else one_line(exc)
        raise AdapterLoadError(f"{directory / CONFIG_NAME}: invalid adapter config: {problem}") from None
