"""peft_equi's NequIP extension, loaded by ``import nequip`` (entry point ``nequip.extension``: ``init_always``).

**Model modifier** ``merge_peft_adapters``.  NequIP finds modifiers as ``@model_modifier``
classmethods of the classes inside a model; every adapted model contains
:class:`peft_equi.AdaptedLayer` (subclasses of it, one per backend), so the modifier is attached
there, bound to ``AdaptedLayer`` from every subclass, and ``nequip-compile``,
``nequip-package modify`` and ``nequip.model.modify`` find it by name:

.. code-block:: bash

    nequip-compile ft/last.ckpt merged.nequip.pt2 --mode aotinductor --device cpu \\
        --modifiers merge_peft_adapters ...
    nequip-package modify adapted.nequip.zip merged.nequip.zip --modifier merge_peft_adapters

It folds every adapter into its layer, in place (LoRA, ELoRA, BitFit on layers with a bias,
static FiLM), leaving a plain NequIP model that compiles and packages like an unadapted one.
Input-dependent adapters (MMEA, conditioned FiLM) raise :class:`peft_equi.NotMergeableError`
naming the layers and leave the model as it was; such models compile unmerged
(``--mode aotinductor``).

**Packaging.**  peft_equi is registered as an external library for ``nequip-package``, so a
checkpoint with (unmerged) adapters packages; loading that package needs peft_equi
installed.  A package merged with ``nequip-package modify ... --modifier merge_peft_adapters``
no longer refers to peft_equi.
"""

from __future__ import annotations

from torch import nn

from peft_equi.core.adapted_layer import AdaptedLayer
from peft_equi.tuner.model import merge_adapters

MERGE_MODIFIER = "merge_peft_adapters"


class _OnAdaptedLayer(classmethod):
    """A classmethod bound to :class:`AdaptedLayer` itself whichever subclass it is read from.

    Each backend is its own ``AdaptedLayer`` subclass; NequIP collects
    modifiers from every module class in a model and requires the same name to be the same
    bound method, which a plain classmethod is not across subclasses.
    """

    def __get__(self, obj: object, owner: type | None = None):
        return super().__get__(obj, AdaptedLayer)


def _merge_peft_adapters(cls: type, model: nn.Module) -> nn.Module:
    """Fold every adapter of ``model`` into its layer (in place); see :func:`peft_equi.merge_adapters`."""
    return merge_adapters(model)


def register() -> None:
    """Attach the modifier to :class:`AdaptedLayer` and declare peft_equi external for packaging (idempotent)."""
    from nequip.nn.model_modifier_utils import model_modifier
    from nequip.scripts._package_utils import register_libraries_as_external_for_packaging

    if not hasattr(AdaptedLayer, MERGE_MODIFIER):
        # persistent: merging is a change `nequip-package modify` may write into a package
        modifier = model_modifier(persistent=True)(_OnAdaptedLayer(_merge_peft_adapters))
        setattr(AdaptedLayer, MERGE_MODIFIER, modifier)
    register_libraries_as_external_for_packaging(extern_modules=["peft_equi"])


register()
