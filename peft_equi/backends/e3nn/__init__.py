"""e3nn layers: ``o3.Linear``, ``o3.TensorProduct`` (and subclasses), ``nn.FullyConnectedNet`` layers."""
