"""Deployable files of adapted MACE models: ``.model`` files MACE's own tools read, and LAMMPS's TorchScript files.

Both take the run's per-element energy correction as ``energy_shift`` and fold it into the
model's atomic energies (:mod:`peft_equi.energy_correction`), so the file gives the fine-tuned
absolute energies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from peft_equi.energy_correction import EnergyShift
from peft_equi.errors import NotMergeableError, PeftEquiError
from peft_equi.families.mace.potential import MacePotential
from peft_equi.families.mace.subset import subset_elements
from peft_equi.tuner.model import PeftModel
from peft_equi.utils.copying import deepcopy_module

REQUIREMENT_NOTE = "this model has input-dependent adapters ({adapters}); loading it needs peft_equi installed"


def save_adapted_mace(
    model: PeftModel,
    path: str | Path,
    atomic_numbers: Sequence[int] | None = None,
    energy_shift: EnergyShift | None = None,
) -> bool:
    """Write ``model`` to ``path`` the way MACE does (``torch.save`` of the module); return whether merged.

    A mergeable adaptation is merged (into a copy) and saved as the plain MACE class, which
    mace-torch loads and runs without peft_equi.  Otherwise (MMEA, FiLM with conditioning) the
    adapted model is saved as is, with ``peft_equi_required`` set on it and a
    ``<path>.peft_equi.json`` note beside it saying that peft_equi is needed to load it.

    ``atomic_numbers``: save a model that knows only these elements (a smaller file, same
    energies on them; :func:`~peft_equi.families.mace.subset.subset_elements` of the
    merged model).  An unmerged adaptation cannot be cut (its adapters may hold per-element
    weights): cut the base model with ``subset_elements`` before attaching adapters instead;
    a model already cut that way is saved as it is.

    ``energy_shift``: the run's per-element energy correction (its directory, its
    ``energy_correction.json``, or ``{element: eV}``), folded into the saved model's atomic
    energies; the model passed in is not changed by it.
    """
    path = Path(path)
    potential = MacePotential(model, path.name)  # the family's hook folds the correction
    wanted = None if atomic_numbers is None else sorted({int(z) for z in atomic_numbers})
    if wanted is not None and wanted == sorted(int(z) for z in model.atomic_numbers):
        wanted = None  # already these elements
    try:
        plain = deepcopy_module(model).merge_and_unload()
    except NotMergeableError as exc:
        if wanted is not None:
            raise PeftEquiError(
                f"cannot cut an unmerged adapted model to elements {wanted} ({exc}): call subset_elements on the "
                "base model before get_peft_model"
            ) from None
        adapters = sorted({a.name for _, a in model.adapters() if a.merge_blocker()})
        note = REQUIREMENT_NOTE.format(adapters=", ".join(adapters))
        saved = model if energy_shift is None else potential.fold_energy_shift(deepcopy_module(model), energy_shift)
        saved.peft_equi_required = note
        torch.save(saved, path)
        path.with_name(path.name + ".peft_equi.json").write_text(
            json.dumps({"requires": "peft_equi", "why": note, "detail": str(exc)}, indent=2)
        )
        return False
    potential.fold_energy_shift(plain, energy_shift)
    if wanted is not None:
        plain = subset_elements(plain, wanted)
    torch.save(plain, path)
    return True


LAMMPS_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def export_lammps(
    model: torch.nn.Module,
    path: str | Path,
    dtype: str = "float64",
    head: str | None = None,
    merge: bool | None = None,
    energy_shift: EnergyShift | None = None,
) -> Path:
    """Write ``model`` as a TorchScript file for LAMMPS's ML-MACE pair style (``pair_style mace``).

    What mace's ``create_lammps_model`` does (its default ``libtorch`` format), for an adapted
    model: the model, converted to ``dtype`` (float64 by default, as mace's tool) and moved to
    the CPU, is wrapped in mace's ``LAMMPS_MACE`` and compiled with e3nn's ``jit.compile``.

    ``model``: a :class:`PeftModel` of a MACE model, or a plain MACE model (merged already).
    ``merge``: ``None`` merges a mergeable adaptation (the plain MACE runs, no adapter cost) and
    keeps an unmergeable one (MMEA, FiLM with conditioning) unmerged; ``True`` requires merging
    (raises :class:`NotMergeableError` otherwise); ``False`` keeps the adapters unmerged.
    ``head``: the head of a multi-head model (default: the last, as ``LAMMPS_MACE``).
    ``energy_shift``: the run's per-element energy correction (see :func:`save_adapted_mace`),
    folded into the atomic energies (of every head).
    The model passed in is not changed.  Returns ``path``.
    """
    from e3nn.util import jit
    from mace.calculators import LAMMPS_MACE

    if dtype not in LAMMPS_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(LAMMPS_DTYPES)}, not {dtype!r}")
    path = Path(path)
    plain = deepcopy_module(model)
    if isinstance(plain, PeftModel):
        if merge is False:
            plain = plain.base_model
        else:
            try:
                plain = plain.merge_and_unload()
            except NotMergeableError:
                if merge:
                    raise
                plain = plain.base_model
    MacePotential(plain, path.name).fold_energy_shift(plain, energy_shift)
    plain = plain.to(device="cpu", dtype=LAMMPS_DTYPES[dtype])
    plain.eval()
    _keep_lammps_dtype_probe(plain)
    lammps_model = LAMMPS_MACE(plain) if head is None else LAMMPS_MACE(plain, head=head)
    compiled = jit.compile(lammps_model)
    compiled.save(str(path))
    return path


def _keep_lammps_dtype_probe(model: torch.nn.Module) -> None:
    """Give LAMMPS the attribute it reads the model's dtype from.

    ML-MACE's ``pair_coeff`` takes the float dtype of its inputs from the attribute
    ``model.node_embedding.linear.weight`` of the loaded file.  When that layer carries an
    adapter, its weight sits at ``...linear.base_layer.weight``; an empty buffer of the model's
    dtype under the old name (unused by ``forward``) keeps the probe working.
    """
    embedding = getattr(getattr(model, "node_embedding", None), "linear", None)
    if embedding is None or "weight" in embedding._parameters or "weight" in embedding._buffers:
        return  # (an adapted layer reads other attributes from its base layer: look at what it holds)
    base = getattr(embedding, "base_layer", None)
    weight = getattr(base, "weight", None)
    if isinstance(weight, torch.Tensor):
        embedding._buffers["weight"] = weight.new_empty(0)  # register_buffer would see the base layer's
