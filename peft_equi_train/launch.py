"""The ``peft-equi`` console entry point: a one-line error, not a traceback, when the train extra is missing."""

from __future__ import annotations

import sys

from peft_equi.errors import MissingDependencyError
from peft_equi_train.extra import require_train_extra


def main() -> None:
    """Run the command line (:mod:`peft_equi_train.cli`) if the train extra is installed."""
    try:
        require_train_extra()
    except MissingDependencyError as exc:
        sys.exit(f"error: {exc}")
    from peft_equi_train.cli import app

    app()
