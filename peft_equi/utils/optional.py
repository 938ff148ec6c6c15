"""Optional dependencies: imported where a feature needs them, with a one-line error naming what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from peft_equi.errors import MissingDependencyError


def require(module: str, feature: str, install: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise :class:`~peft_equi.errors.MissingDependencyError`.

    ``install`` is what to pass to pip (``"pyyaml"``, ``"peft-equi[train]"``).

    >>> require("json", "reading JSON", "nothing").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.partition(".")[0]:
            raise  # the module exists but one of its own imports is missing: not ours to explain
        raise MissingDependencyError(f"{feature} needs {module!r}: pip install '{install}'") from None
