"""Adapters in a ``nequip-train`` YAML config, as a model ``_target_``.

``NequIPLightningModule`` builds its model with ``hydra.utils.get_method(_target_)(**options)``,
so any importable callable can wrap another model config:

.. code-block:: yaml

    training_module:
      model:
        _target_: peft_equi.families.nequip.config.peft_model
        adapter: mmea            # adapter or preset name
        options: {rank: 16}
        model:
          _target_: nequip.model.ModelFromPackage
          package_path: foundation.nequip.zip

The inner model is built, adapted in place (everything but the adapters frozen) and
returned as the plain NequIP ``GraphModel`` (or ``ModuleDict`` of them), so nequip's
contract and state-dict keys hold.  This also works for packaged models, whose classes are
the package's own copies (which is why it is not a ``@model_modifier``: those are looked up
on the model's own classes).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from peft_equi.tuner.model import get_peft_model


def _instantiate(config: Any) -> nn.Module:
    """The module a hydra-style config (``_target_`` + arguments) describes; a module is returned as it is."""
    if isinstance(config, nn.Module):
        return config
    from hydra.utils import get_method

    config = dict(config)
    return get_method(config.pop("_target_"))(**config)


def _plain(options: Any) -> dict[str, Any]:
    """Options as plain Python containers (hydra may pass OmegaConf ones, which pydantic rejects)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(options):
        return OmegaConf.to_container(options, resolve=True)
    return dict(options or {})


def peft_model(model: Any, adapter: str, options: dict[str, Any] | None = None) -> nn.Module:
    """Build ``model`` (a config with ``_target_``, or a module) and attach ``adapter`` to every graph model in it."""
    built = _instantiate(model)
    for graph_model in built.values() if isinstance(built, nn.ModuleDict) else [built]:
        get_peft_model(graph_model, adapter, **_plain(options))
    return built
