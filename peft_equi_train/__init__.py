"""peft-equi's fine-tuning application: engine, ``peft-equi`` command, MD check, xTB labels.

Installed with the ``train`` extra (``pip install 'peft-equi[train]'``); built on the library
:mod:`peft_equi`, which imports nothing from here.  The engine's names load on first use, so
that a missing extra is reported in one line (:func:`~peft_equi_train.extra.require_train_extra`).
"""

from __future__ import annotations

import importlib

#: the public names and their modules
_EXPORTS = {
    "FinetuneConfig": "peft_equi_train.config",
    "Finetuner": "peft_equi_train.engine",
    "TrainingDivergedError": "peft_equi_train.engine",
    "evaluate": "peft_equi_train.evaluation",
}

__all__ = ["FinetuneConfig", "Finetuner", "TrainingDivergedError", "evaluate"]


def __getattr__(name: str) -> object:
    """The public name ``name``, imported from its module on first use (after checking the extra)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'peft_equi_train' has no attribute {name!r}")
    from peft_equi_train.extra import require_train_extra

    require_train_extra()
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
