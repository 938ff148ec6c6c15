"""SevenNet (sevenn): the training interface of its checkpoints (``7net-0``, ...)."""
