"""The core: what every adapter, backend and model family builds on, and nothing model-specific.

It imports nothing above it (``tests/unit/test_import_graph.py``): the built-in adapters,
backends and presets register themselves from their own packages.

* :mod:`~peft_equi.core.irreps` -- immutable irreps and channel layouts;
* :mod:`~peft_equi.core.spec` -- :class:`LayerSpec`, the backend-free description of a layer;
* :mod:`~peft_equi.core.adapter` -- the :class:`Adapter` and :class:`AdapterConfig` base classes;
* :mod:`~peft_equi.core.adapted_layer` -- :class:`AdaptedLayer`, the base of every backend: one class per
  layer type that describes the layer and runs it with its adapter;
* :mod:`~peft_equi.core.layouts` -- weight layouts several backends share;
* :mod:`~peft_equi.core.plan` -- discovery of adaptable layers and the per-layer plan of a config;
* :mod:`~peft_equi.core.config` / :mod:`~peft_equi.core.presets` -- configs, rules and named presets;
* :mod:`~peft_equi.core.registry` -- the registries of adapters, backends and presets.
"""
