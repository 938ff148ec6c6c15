"""The model-family interface of the fine-tuning engine, and loading models by name or path."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from peft_equi.core.registry import Registry
from peft_equi.energy_correction import EnergyCorrection, EnergyShift
from peft_equi.errors import EnergyShiftError, PeftEquiError, UnknownElementError, element_names


class Potential(ABC):
    """A model of one family plus what the engine needs to train it.

    ``graphs`` precomputes per-structure inputs (neighbour lists) once; ``collate`` batches
    them; ``energy_forces`` runs any module of the family (the base model, its
    ``PeftModel``, a DDP wrapper) and returns per-structure energies and per-atom forces
    (``-dE/dx`` by autograd, differentiable for force losses when ``training``).
    """

    family: ClassVar[str]
    suffix: ClassVar[str]  # of the model files :meth:`save` writes (``.model``)

    def __init__(self, model: nn.Module, name: str) -> None:
        self.model = model
        self.name = name

    @property
    @abstractmethod
    def atomic_numbers(self) -> list[int]:
        """Elements the model knows."""

    @abstractmethod
    def graphs(self, atoms: Sequence) -> list[Any]:
        """Per-structure model inputs for ``ase.Atoms``."""

    @abstractmethod
    def collate(self, graphs: Sequence[Any], device: torch.device, dtype: torch.dtype) -> Any:
        """A batch of ``graphs`` on ``device``, floating tensors in ``dtype``."""

    @abstractmethod
    def energy_forces(self, model: nn.Module, batch: Any, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(energies (n_structures,), forces (n_atoms, 3))`` in eV and eV/A."""

    @abstractmethod
    def save(self, model: nn.Module, path: Path) -> Path:
        """Save a plain (merged) model of this family in its own format to :meth:`saved_path`; return that path."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Potential:
        """Move and cast the model in place (``None``: unchanged); families with hard-coded dtypes override it."""
        self.model.to(device=device, dtype=dtype)
        return self

    def save_atomically(self, model: nn.Module, path: str | Path) -> Path:
        """:meth:`save` to :meth:`saved_path` through a temporary file renamed at the end: never a partial file."""
        from peft_equi.utils.files import atomic_write

        return atomic_write(self.saved_path(path), lambda tmp: self.save(model, tmp))

    def saved_path(self, path: str | Path) -> Path:
        """Where :meth:`save` writes for ``path``: ``path`` with the family's :attr:`suffix`."""
        return Path(path).with_suffix(self.suffix)

    def atomic_energies(self) -> np.ndarray:
        """The model's own per-element reference energies :math:`E_{0,z}` (eV, in :attr:`atomic_numbers` order).

        ``e0s: average`` replaces them (mace's ``--E0s=average``); families without them refuse.
        """
        raise PeftEquiError(
            f"e0s 'average' replaces the model's per-element energies, which the {self.family} family does not "
            "expose here: use e0s 'fit' (a correction on top of the model) or an isolated-atoms file"
        )

    def fold_energy_shift(self, model: nn.Module, energy_shift: EnergyShift | None) -> nn.Module:
        """Make ``model``'s energies include a per-element energy correction; in place, returns ``model``.

        Afterwards ``model`` (of this family, or its ``PeftModel``) gives
        E_model + sum_i delta_(z_i): what the engine evaluates and what a
        deployed file must give (:mod:`peft_equi.energy_correction`).  ``energy_shift``: see
        :class:`~peft_equi.energy_correction.EnergyCorrection` (a run's directory, its
        ``energy_correction.json``, ``{element: eV}``); ``None`` or all zeros changes nothing.
        A family with no per-element energies to fold it into raises
        :class:`~peft_equi.errors.EnergyShiftError` and leaves ``model`` as it was.
        """
        from peft_equi.tuner.model import PeftModel

        if energy_shift is None:
            return model
        delta = EnergyCorrection.of(energy_shift).aligned(self.atomic_numbers)
        if np.any(delta != 0):  # a PeftModel reads its base model's attributes: the hook sees the base model
            self.add_per_element_energies(model.base_model if isinstance(model, PeftModel) else model, delta)
        return model

    def add_per_element_energies(self, model: nn.Module, delta: np.ndarray) -> None:
        """Family hook of :meth:`fold_energy_shift`: add ``delta[k]`` eV per atom of element ``atomic_numbers[k]``.

        Implemented by folding into the model's own per-element energies (MACE's atomic
        energies, NequIP's per-type shifts, SevenNet's per-species shift), in place; raise
        :class:`~peft_equi.errors.EnergyShiftError` without changing ``model`` where that is
        impossible.
        """
        raise EnergyShiftError(f"{self.family} models have no per-element energies to fold an energy correction into")

    def to_cueq(self, device: str) -> str:
        """Move the model to cuequivariance layers; returns a line saying which kernels run."""
        raise PeftEquiError(f"the {self.family} model family has no cuequivariance conversion here")

    def subset_elements(self, atomic_numbers: Sequence[int]) -> bool:
        """Cut the model to ``atomic_numbers`` (known to it); False when the family cannot (model kept whole)."""
        return False

    def check_elements(self, atomic_numbers: Sequence[int], where: str) -> None:
        """Raise a clear error naming the elements of ``where`` the model does not know."""
        unknown = sorted(set(int(z) for z in atomic_numbers) - set(self.atomic_numbers))
        if unknown:
            raise UnknownElementError(
                f"{where} contains elements the model {self.name} does not know: {element_names(unknown)}"
            )


@dataclass(frozen=True)
class Family:
    """A registered model family: which sources it ``recognises`` and its ``load(source, **options) -> Potential``."""

    name: str
    recognises: Callable[[str], bool]
    load: Callable[..., Potential]


#: The model families, in the registry every extension point uses: register with
#: :func:`register_potential` or from another package through the entry-point group
#: ``peft_equi.families`` (naming the module that holds the decorated loader).
FAMILIES: Registry = Registry(
    "model family",
    "peft_equi.families",
    builtins=(
        "peft_equi.families.mace.potential",
        "peft_equi.families.nequip.potential",
        "peft_equi.families.sevenn.potential",
    ),
)


def register_potential(family: str, recognises: Callable[[str], bool]) -> Callable:
    """Decorator: register ``loader(source, *, dtype, trust_pickle) -> Potential`` for the sources (model names or
    file paths) ``recognises`` accepts."""

    def decorator(loader: Callable[..., Potential]) -> Callable[..., Potential]:
        FAMILIES.register(family, Family(family, recognises, loader))
        return loader

    return decorator


def load_potential(source: str, *, dtype: torch.dtype = torch.float64, trust_pickle: bool = False) -> Potential:
    """A potential from a model name (``7net-0``) or a file path (MACE ``.model``, NequIP ``.nequip.zip``).

    The first registered family (in name order) whose ``recognises(source)`` is true loads it.
    """
    for name in FAMILIES.names():
        family = FAMILIES.get(name)
        if family.recognises(source):
            return family.load(source, dtype=dtype, trust_pickle=trust_pickle)
    if not Path(source).exists() and ("/" in source or "." in source):
        raise FileNotFoundError(f"model file not found: {source}")
    raise PeftEquiError(
        f"cannot tell which model {source!r} is (known families: {', '.join(FAMILIES.names())}; names: 7net-0)"
    )
