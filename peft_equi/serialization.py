"""Saving and loading adapters in the peft format: ``adapter_config.json`` + safetensors.

Only adapter parameters and the tensors the config trains fully are written (never the
frozen base weights, nor backend caches).  Files are written to a temporary name and
renamed, so an interrupted save never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from peft_equi.config import PeftConfig
from peft_equi.errors import AdapterLoadError

if TYPE_CHECKING:
    from peft_equi.model import PeftModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_adapter(model: PeftModel, directory: str | Path) -> Path:
    """Write the adapter of ``model`` into ``directory`` (created if needed)."""
    from peft_equi import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.adapter_state_dict().items()}
    meta = {
        "format": FORMAT_VERSION,
        "peft_equi_version": __version__,
        "base_model_class": f"{type(model.base_model).__module__}.{type(model.base_model).__qualname__}",
        "config": json.loads(model.peft_config.to_json()),
        "layers": {
            path: {"adapter": layer.adapter.name, "backend": layer.backend.name, "spec": layer.spec.describe()}
            for path, layer in model.adapted_layers.items()
        },
    }
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return directory


def read_adapter(directory: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a saved adapter; clear errors for missing files."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise AdapterLoadError(f"{directory / name} not found: not a saved peft_equi adapter directory")
    try:
        meta = json.loads((directory / CONFIG_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterLoadError(f"{directory / CONFIG_NAME} is not valid JSON: {exc}") from None
    if meta.get("format") != FORMAT_VERSION or "config" not in meta:
        raise AdapterLoadError(
            f"{directory / CONFIG_NAME}: not a peft_equi adapter of format {FORMAT_VERSION} "
            f"(format {meta.get('format')!r}, keys {sorted(meta)})"
        )
    with safe_open(directory / WEIGHTS_NAME, framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    return meta, tensors


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{title}: {', '.join(items[:limit])}{more}"


def load_adapter(model: nn.Module, directory: str | Path) -> PeftModel:
    """Attach the adapter saved in ``directory`` to ``model`` and load its values.

    The saved tensors are checked against the adapters the config builds on this model
    before anything is attached; missing or unexpected keys and shape mismatches are listed.
    """
    from peft_equi.model import PeftModel, plan_assignments, trained_tensor_names

    meta, tensors = read_adapter(directory)
    config = PeftConfig.model_validate(meta["config"])
    assignments = plan_assignments(model, config)
    planned = {a.layer.path: a.adapter for a in assignments if a.adapter is not None}
    expected: dict[str, tuple[int, ...]] = {}
    for path, adapter in planned.items():
        for name, tensor in adapter.state_dict().items():
            expected[f"adapters.{path}.{name}" if path else f"adapters.{name}"] = tuple(tensor.shape)
    base = dict(model.named_parameters()) | dict(model.named_buffers())
    for name in trained_tensor_names(model, config, assignments):
        expected[f"base.{name}"] = tuple(base[name].shape)
    saved_layers = set(meta.get("layers", {}))
    problems = [
        _listing(title, items)
        for title, items in [
            ("layers adapted when saved but not now", sorted(saved_layers - set(planned))),
            ("layers adapted now but not when saved", sorted(set(planned) - saved_layers)),
            ("missing keys", sorted(k for k in expected if k not in tensors)),
            ("unexpected keys", sorted(k for k in tensors if k not in expected)),
            (
                "shape mismatches",
                sorted(
                    f"{k} saved {tuple(tensors[k].shape)} vs model {shape}"
                    for k, shape in expected.items()
                    if k in tensors and tuple(tensors[k].shape) != shape
                ),
            ),
        ]
        if items
    ]
    if problems:
        raise AdapterLoadError(f"adapter in {directory} does not fit this model:\n  " + "\n  ".join(problems))
    peft_model = PeftModel(model, config, assignments)
    current = peft_model.adapter_state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            current[key].copy_(value)
    return peft_model
