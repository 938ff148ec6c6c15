"""cuequivariance-torch layers (``cuet.Linear``, ``cuet.FullyConnectedTensorProduct``,
``cuet.SymmetricContraction``), in either layout.  Duck typed: nothing is imported from
cuequivariance.  Weight-space adapters feed the effective weight to the layer's own
segmented polynomial ``f``, so the fused kernel stays the only op on the hot path.
"""
