"""Model-specific integrations (MACE, ...): presets, loading, calculators."""
