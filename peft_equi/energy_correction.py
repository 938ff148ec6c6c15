"""A run's per-element energy correction (``energy_correction.json``), the part of the fine-tuned model beside it.

The engine adds a fixed :math:`\\delta_z` per atom of element :math:`z` to the model's energy,
:math:`E = E_\\text{model} + \\sum_i \\delta_{z_i}` (``e0s`` in docs/finetuning.md), and writes
it beside the adapter::

    {"atomic_numbers": [1, 6, 8], "delta_eV": [-0.41, -3.2, -5.7]}

The fine-tuned model is the adapted model plus this correction.  Every deployed form includes
it: the family folds it into the model's own per-element energies
(:meth:`peft_equi.families.base.Potential.fold_energy_shift`), so a deployed file gives the
fine-tuned absolute energies.  The functions that write deployable files take it as
``energy_shift=``: an :class:`EnergyCorrection`, a mapping ``{element: eV}`` (atomic numbers
or symbols as keys), or the path of a run directory or of its ``energy_correction.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peft_equi.elements import ATOMIC_NUMBERS
from peft_equi.errors import PeftEquiError, UnknownElementError, element_names, one_line
from peft_equi.utils.files import atomic_write

FILE_NAME = "energy_correction.json"


@dataclass(frozen=True)
class EnergyCorrection:
    """:math:`\\delta_z` (eV per atom) for each element of ``atomic_numbers``."""

    atomic_numbers: tuple[int, ...]
    delta: tuple[float, ...]

    def __post_init__(self) -> None:
        numbers = tuple(int(z) for z in self.atomic_numbers)
        delta = tuple(float(d) for d in self.delta)
        if len(numbers) != len(delta):
            raise PeftEquiError(f"energy correction: {len(numbers)} elements but {len(delta)} values")
        if len(set(numbers)) != len(numbers) or any(not 0 < z <= 118 for z in numbers):
            raise PeftEquiError(f"energy correction: atomic numbers must be distinct, 1-118: {list(numbers)}")
        if not all(math.isfinite(d) for d in delta):
            raise PeftEquiError(f"energy correction: values must be finite: {list(delta)}")
        object.__setattr__(self, "atomic_numbers", numbers)
        object.__setattr__(self, "delta", delta)

    @classmethod
    def read(cls, path: str | os.PathLike) -> EnergyCorrection:
        """The correction in ``path``: a run directory or its ``energy_correction.json``."""
        path = Path(path)
        file = path / FILE_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"energy correction not found: {file}")
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
            return cls(tuple(content["atomic_numbers"]), tuple(content["delta_eV"]))
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            detail = f"missing {exc}" if isinstance(exc, KeyError) else one_line(exc)
            raise PeftEquiError(f"{file}: not an energy correction ({detail})") from None

    @classmethod
    def of(cls, value: EnergyShift) -> EnergyCorrection:
        """``value`` as a correction: one already, ``{element: eV}`` (atomic numbers or symbols), or a path."""
        if isinstance(value, EnergyCorrection):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls.read(value)
        if isinstance(value, Mapping):
            unknown = [k for k in value if isinstance(k, str) and k not in ATOMIC_NUMBERS]
            if unknown:
                raise PeftEquiError(f"energy correction: unknown element symbols {unknown}")
            numbers = [ATOMIC_NUMBERS[k] if isinstance(k, str) else int(k) for k in value]
            return cls(tuple(numbers), tuple(value.values()))
        raise PeftEquiError(
            f"energy_shift must be an EnergyCorrection, a mapping {{element: eV}} or the path of a run's "
            f"{FILE_NAME}, not {type(value).__name__}"
        )

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``energy_correction.json`` into ``folder`` (atomically); returns its path."""
        content = json.dumps({"atomic_numbers": list(self.atomic_numbers), "delta_eV": list(self.delta)}, indent=2)
        return atomic_write(Path(folder) / FILE_NAME, lambda tmp: tmp.write_text(content, encoding="utf-8"))

    def aligned(self, atomic_numbers: Sequence[int]) -> np.ndarray:
        """:math:`\\delta` per element of ``atomic_numbers`` (a model's order); 0 for elements not listed here.

        An element listed here that ``atomic_numbers`` lacks is an error: that correction would be lost.
        """
        order = [int(z) for z in atomic_numbers]
        missing = [z for z in self.atomic_numbers if z not in order]
        if missing:
            raise UnknownElementError(
                f"the energy correction is for elements the model does not know: {element_names(missing)}"
            )
        by_element = dict(zip(self.atomic_numbers, self.delta))
        return np.array([by_element.get(z, 0.0) for z in order])


#: What the deploying functions accept as ``energy_shift``.
EnergyShift = EnergyCorrection | Mapping[int | str, float] | str | os.PathLike
