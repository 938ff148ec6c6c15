"""MACE (mace-torch): the seed papers' presets, loading ``.model`` files, element subsetting, export, an ASE calculator.

The presets (``mmea-paper``, ``elora-paper``, ``mace-lora``, ``freeze``) live in
:mod:`peft_equi.families.mace.presets`, which the preset registry imports on its first lookup
(``list_presets``, ``get_peft_model`` with a name, ...), not when :mod:`peft_equi` is imported.
No module here imports mace at import time: the functions import it when called.
"""

from peft_equi.families.mace.subset import subset_elements

__all__ = ["subset_elements"]
