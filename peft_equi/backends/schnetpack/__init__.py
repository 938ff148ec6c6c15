"""schnetpack layers: ``schnetpack.nn.Dense`` (a ``torch.nn.Linear`` with an activation in its ``forward``)."""
