"""MACE (mace-torch): the seed papers' presets, loading ``.model`` files, export and an ASE calculator.

Importing :mod:`peft_equi` registers the presets; the other functions import mace lazily.
"""
