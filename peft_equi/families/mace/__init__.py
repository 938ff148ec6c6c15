"""MACE (mace-torch): the seed papers' presets, loading ``.model`` files, element subsetting, export, an ASE calculator.

Importing :mod:`peft_equi` registers the presets; the other functions import mace lazily.
"""

from peft_equi.families.mace.subset import subset_elements

__all__ = ["subset_elements"]
