"""NequIP layers that are not e3nn layers (duck typed, so packaged ``.nequip.zip`` copies match too)."""
