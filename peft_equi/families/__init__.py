"""One training interface per model family: structures -> batch -> energies and forces.

The fine-tuning engine only talks to :class:`~peft_equi.families.base.Potential`; each
family (MACE, SevenNet, ...) implements it once.  :func:`load_potential` turns a model
name or path (``7net-0``, ``model.model``) into a potential.
"""

from peft_equi.families.base import FAMILIES, Potential, load_potential, register_potential

__all__ = ["FAMILIES", "Potential", "load_potential", "register_potential"]
