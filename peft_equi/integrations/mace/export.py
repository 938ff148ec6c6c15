"""Saving adapted MACE models as ``.model`` files that MACE's own tools read."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from peft_equi.errors import NotMergeableError, PeftEquiError
from peft_equi.integrations.mace.subset import subset_elements
from peft_equi.model import PeftModel

REQUIREMENT_NOTE = "this model has input-dependent adapters ({adapters}); loading it needs peft_equi installed"


def save_adapted_mace(model: PeftModel, path: str | Path, atomic_numbers: Sequence[int] | None = None) -> bool:
    """Write ``model`` to ``path`` the way MACE does (``torch.save`` of the module); return whether merged.

    A mergeable adaptation is merged (into a copy) and saved as the plain MACE class, which
    mace-torch loads and runs without peft_equi.  Otherwise (MMEA, FiLM with conditioning) the
    adapted model is saved as is, with ``peft_equi_required`` set on it and a
    ``<path>.peft_equi.json`` note beside it saying that peft_equi is needed to load it.

    ``atomic_numbers``: save a model that knows only these elements (a smaller file, same
    energies on them; :func:`~peft_equi.integrations.mace.subset.subset_elements` of the
    merged model).  An unmerged adaptation cannot be cut (its adapters may hold per-element
    weights): cut the base model with ``subset_elements`` before attaching adapters instead;
    a model already cut that way is saved as it is.
    """
    path = Path(path)
    wanted = None if atomic_numbers is None else sorted({int(z) for z in atomic_numbers})
    if wanted is not None and wanted == sorted(int(z) for z in model.atomic_numbers):
        wanted = None  # already these elements
    try:
        plain = copy.deepcopy(model).merge_and_unload()
    except NotMergeableError as exc:
        if wanted is not None:
            raise PeftEquiError(
                f"cannot cut an unmerged adapted model to elements {wanted} ({exc}): call subset_elements on the "
                "base model before get_peft_model"
            ) from None
        adapters = sorted({a.name for _, a in model.adapters() if a.merge_blocker()})
        note = REQUIREMENT_NOTE.format(adapters=", ".join(adapters))
        model.peft_equi_required = note
        torch.save(model, path)
        path.with_name(path.name + ".peft_equi.json").write_text(
            json.dumps({"requires": "peft_equi", "why": note, "detail": str(exc)}, indent=2)
        )
        return False
    if wanted is not None:
        plain = subset_elements(plain, wanted)
    torch.save(plain, path)
    return True
