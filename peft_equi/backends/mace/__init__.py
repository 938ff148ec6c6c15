"""MACE layers that are not plain e3nn layers: the symmetric contraction (duck typed, no mace import)."""
