"""The ``train`` extra: the packages the engine, the command line and the MD check need beyond the library."""

from __future__ import annotations

from importlib.util import find_spec

from peft_equi.errors import MissingDependencyError

#: module -> its distribution, as pyproject.toml's ``train`` extra lists them
TRAIN_EXTRA: dict[str, str] = {
    "lightning": "lightning",
    "torch_ema": "torch-ema",
    "ase": "ase",
    "yaml": "pyyaml",
    "typer": "typer",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
}


def require_train_extra() -> None:
    """Raise :class:`~peft_equi.errors.MissingDependencyError` naming every missing package of the extra."""
    missing = [distribution for module, distribution in TRAIN_EXTRA.items() if find_spec(module) is None]
    if missing:
        raise MissingDependencyError(
            f"fine-tuning needs the train extra: pip install 'peft-equi[train]' (missing: {', '.join(missing)})"
        )
