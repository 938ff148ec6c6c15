"""NequIP (0.19) as a :class:`~peft_equi.families.base.Potential`; packaged ``.nequip.zip`` models by path.

Notes from its internals: ``nequip.utils.global_state.set_global_state()`` must run before
building or loading models (it sets float64 as the default dtype and seeds everything);
forces keep their graph (``create_graph``) only in ``train()`` mode; packaged models carry
their own copies of the e3nn and nequip classes, which duck-typed discovery still finds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peft_equi.elements import ATOMIC_NUMBERS
from peft_equi.errors import EnergyShiftError
from peft_equi.families.base import Potential, register_potential
from peft_equi.utils.dtype import torch_default_dtype


@contextlib.contextmanager
def preserved_global_state() -> Iterator[None]:
    """Undo what NequIP changes process-wide: default dtype, random states and e3nn's optimisation
    defaults (building a NequIP model switches e3nn's ``jit_mode`` to ``script``, after which
    other e3nn models - MACE, SevenNet - built in the process can no longer be deep-copied)."""
    import random

    import e3nn
    import numpy as np

    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    e3nn_defaults = e3nn.get_optimization_defaults()
    try:
        with torch_default_dtype(None):
            yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
        e3nn.set_optimization_defaults(**e3nn_defaults)


def set_nequip_global_state() -> None:
    """NequIP's required global set-up (``set_global_state``), keeping the caller's global state."""
    from nequip.utils.global_state import set_global_state

    with preserved_global_state():
        set_global_state()


class NequipPotential(Potential):
    """A NequIP ``GraphModel`` (built, from a checkpoint, or from a package)."""

    family = "nequip"
    suffix = ".nequip-state.pt"

    @property
    def atomic_numbers(self) -> list[int]:
        return sorted(ATOMIC_NUMBERS[name] for name in self.model.type_names)

    @property
    def r_max(self) -> float:
        return float(self.model.metadata["r_max"])

    def graphs(self, atoms: Sequence) -> list[Any]:
        from nequip.data import compute_neighborlist_, from_ase
        from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper

        mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=list(self.model.type_names))
        with torch_default_dtype(torch.float64):  # nequip builds them in torch's default dtype; cast in collate
            return [compute_neighborlist_(mapper(from_ase(a)), self.r_max) for a in atoms]

    def collate(self, graphs: Sequence[Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        from nequip.data import AtomicDataDict

        batch = AtomicDataDict.batched_from_list(list(graphs))
        return {
            k: (v.to(device=device, dtype=dtype) if torch.is_floating_point(v) else v.to(device))
            for k, v in batch.items()
            if isinstance(v, torch.Tensor)
        }

    def energy_forces(self, model: nn.Module, batch: dict[str, Any], training: bool):
        model.train(training)  # NequIP keeps the force graph (create_graph) only in train mode
        out = model(dict(batch))
        return out["total_energy"].reshape(-1), out["forces"]

    def add_per_element_energies(self, model: nn.Module, delta: np.ndarray) -> None:
        """Add ``delta`` to NequIP's per-type energy shifts (the ``PerTypeScaleShift`` giving ``atomic_energy``).

        A model with one shift shared by all types (or none) gets per-type shifts, as nequip's own
        ``modify_PerTypeScaleShift`` modifier gives it: its state dict then holds one shift per
        type, and loads into the architecture built with ``per_type_energy_shifts`` as a
        per-type mapping.
        """
        fields = ("has_shifts", "shifts", "type_names")
        energy = [m for m in model.modules() if getattr(m, "out_field", None) == "atomic_energy"]
        blocks = [m for m in energy if all(hasattr(m, f) for f in fields)]
        if len(blocks) != 1:
            raise EnergyShiftError(
                f"cannot fold the energy correction into this NequIP model: {len(blocks)} per-type scale/shift "
                "blocks of atomic_energy found, 1 expected"
            )
        block = blocks[0]
        by_element = dict(zip(self.atomic_numbers, delta.tolist()))
        shifts = block.shifts
        dtype = shifts.dtype if block.has_shifts else getattr(block, "out_dtype", torch.get_default_dtype())
        per_type = torch.tensor([by_element[ATOMIC_NUMBERS[t]] for t in block.type_names], dtype=dtype).reshape(-1, 1)
        with torch.no_grad():
            if block.has_shifts and shifts.numel() == len(block.type_names):
                shifts += per_type.to(shifts.device)
                return
            common = shifts.reshape(-1)[0] if block.has_shifts else 0.0
            new = (common + per_type).to(shifts.device)
        if isinstance(shifts, nn.Parameter):
            block.shifts = nn.Parameter(new, requires_grad=shifts.requires_grad)
        else:
            block.shifts = new  # the registered buffer, now one value per type
        block.has_shifts, block.shifts_shortcut = True, False

    def save(self, model: nn.Module, path: Path) -> Path:
        """The merged model's state dict (load it into the same architecture; packaging: ``nequip-package``)."""
        path = self.saved_path(path)
        torch.save(model.state_dict(), path)
        return path


def _is_package(source: str) -> bool:
    return source.endswith(".nequip.zip") and Path(source).is_file()


@register_potential("nequip", _is_package)
def load_nequip_package(source: str, *, dtype: torch.dtype, trust_pickle: bool) -> NequipPotential:
    """A packaged NequIP model (``nequip-package build``); loading runs code from the package.

    A torch.package archive carries its own copies of the model's Python modules and runs
    them when loaded (by design: that is what lets it load without the original code), so
    no safe reading exists: it needs ``trust_pickle``, checked before the file is opened.
    """
    from peft_equi.errors import PeftEquiError, UntrustedPickleError
    from peft_equi.utils.safe_load import TRUST_HINT

    if not trust_pickle:
        raise UntrustedPickleError(
            f"{source}: a torch.package archive (NequIP package): loading it executes code from the file; {TRUST_HINT}"
        )
    set_nequip_global_state()
    from nequip.model import ModelFromPackage

    with preserved_global_state():
        models = ModelFromPackage(package_path=source, compile_mode="eager")
    if len(models) != 1:
        raise PeftEquiError(f"{source} holds several models ({', '.join(models)}); fine-tune one of them")
    (model,) = models.values()
    return NequipPotential(model.to(dtype), Path(source).name)
