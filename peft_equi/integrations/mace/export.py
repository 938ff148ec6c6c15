"""Saving adapted MACE models as ``.model`` files that MACE's own tools read."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from peft_equi.errors import NotMergeableError
from peft_equi.model import PeftModel

REQUIREMENT_NOTE = "this model has input-dependent adapters ({adapters}); loading it needs peft_equi installed"


def save_adapted_mace(model: PeftModel, path: str | Path) -> bool:
    """Write ``model`` to ``path`` the way MACE does (``torch.save`` of the module); return whether merged.

    A mergeable adaptation is merged (into a copy) and saved as the plain MACE class, which
    mace-torch loads and runs without peft_equi.  Otherwise (MMEA, FiLM with conditioning) the
    adapted model is saved as is, with ``peft_equi_required`` set on it and a
    ``<path>.peft_equi.json`` note beside it saying that peft_equi is needed to load it.
    """
    path = Path(path)
    try:
        plain = copy.deepcopy(model).merge_and_unload()
    except NotMergeableError as exc:
        adapters = sorted({a.name for _, a in model.adapters() if a.merge_blocker()})
        note = REQUIREMENT_NOTE.format(adapters=", ".join(adapters))
        model.peft_equi_required = note
        torch.save(model, path)
        path.with_name(path.name + ".peft_equi.json").write_text(
            json.dumps({"requires": "peft_equi", "why": note, "detail": str(exc)}, indent=2)
        )
        return False
    torch.save(plain, path)
    return True
