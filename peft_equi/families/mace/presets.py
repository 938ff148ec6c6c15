"""The seed papers' MACE recipes as presets, reproducing their trainable-parameter counts.

* ``mmea-paper`` (MMEA, AAAI 2026): MMEA of rank ``rank`` on every ``o3.Linear``; ELoRA
  (r = alpha = 16) on ``skip_tp`` and on the symmetric contractions' ``weights_max``; LoRA
  (r = 16) on the radial-MLP layers; lower-order contraction weights trained fully (as a
  full-rank ELoRA update, so that the recipe is mergeable and carries over to
  cuequivariance).  Only the MMEA gates grow with ``rank``.  Takes the MMEA adapter's
  options (``activation``, ``heads``, ``gain``, ``gain_sharing``, ``scalar_modulation``,
  ``higher_order_modulation``, ``init``, ``shift_init_std``) and
  ``linear_adapter="conventional"``: the paper's ablations are this recipe with one of them
  changed (``benchmarks/rmd17.py --ablations``).
* ``elora-paper`` (ELoRA, ICML 2025): the same with ELoRA (r = alpha = 16) on the
  ``o3.Linear`` layers too, with consecutive repeated input blocks treated as one
  (``simplify_inputs``), as the papers' MACE version simplified those irreps.
* ``freeze``: mace's ``--freeze N`` (full fine-tuning of what level N leaves trainable).
* ``mace-lora``: ``mace.modules.lora.inject_lora(rank, alpha)`` layer for layer: LoRA on
  every ``o3.Linear`` and every dense layer (``nn.Linear``, FC layers), nothing else.  The
  ``A`` init copies MACE's effective init: N(0, 1) on ``o3.Linear`` (MACE's 1e-3 only
  applies to 2-D weights, and e3nn weights are flat) and N(0, 1e-3) on dense layers.

MACE's 8 Bessel weights: the reference code sets ``requires_grad`` on them, and so counts them
among the trainable parameters, but its ``run_train.py`` puts ``radial_embedding`` in no
optimizer group, so they are never updated.  The paper presets leave them frozen, as the
reference's optimizer does; ``train_bessel=True`` trains them (and reproduces the published
counts, recorded with the command that measures them in ``benchmarks/results/param_counts/``).

The two paper presets start from the initialisation of the papers' reference code, which
differs from the adapters' defaults in three places (see docs/adapters/initialisation.md):

* LoRA on the radial MLP: ``A ~ N(0, 1)`` (``init_std=1.0``; the ``lora`` default is 1e-3);
* ELoRA on the contractions' ``weights_max``: ``A ~ N(0, 1) / P``, ``P`` the coupling
  paths of the contraction (``init_per_coupling_path=True``; 23 or 51 on MACE-OFF);
* MMEA (``init="reference"``): the shift branch's weight keeps PyTorch's default
  ``nn.Linear`` init (or ``N(0, shift_init_std^2)``, the reference 3BPA runs use 1e-3), so
  ``mmea-paper`` is **not** the identity at step 0, as in the paper; ``init="identity"``
  starts that weight at zero instead.

Every other factor starts as in the reference code too: ELoRA ``A ~ N(0, 1)`` and all ``B = 0``;
the MMEA gate with PyTorch's default weight and a zero bias, gain map and shift bias zero.
"""

from __future__ import annotations

from typing import Any, Literal

from peft_equi.adapters.conventional import ConventionalConfig
from peft_equi.adapters.mmea import MmeaConfig
from peft_equi.core.config import PeftConfig, Rule
from peft_equi.core.registry import register_preset

RADIAL_MLP = "*conv_tp_weights*"
SKIP_TP = "*skip_tp"
BESSEL_WEIGHTS = "*bessel_weights"

#: Std of the low-rank ``A`` factors in the reference code (``torch.randn``); ``B`` starts at 0.
REFERENCE_A_STD = 1.0


def _hybrid_rules(rank: int) -> list[Rule]:
    """The parts of the published recipes that are the same for MMEA and ELoRA (reference inits)."""
    elora = {"rank": rank, "alpha": rank, "init_std": REFERENCE_A_STD}
    return [
        Rule(
            adapter="elora",
            target=SKIP_TP,
            kinds=["tensor_product"],
            options=elora,
            required=False,  # some interaction blocks use an o3.Linear skip connection instead
            name="elora on skip_tp",
        ),
        Rule(
            adapter="elora",
            kinds=["contraction"],
            # low rank on weights_max (A = randn(E, P, r) / P); the lower-order weights (weights.*) are trained fully
            options={**elora, "paths": ["*weights_max"], "full_paths": ["*weights.*"], "init_per_coupling_path": True},
            name="elora on contraction weights_max, full lower-order weights",
        ),
        Rule(
            adapter="lora",
            target=RADIAL_MLP,
            kinds=["dense"],
            options={"rank": rank, "init_std": REFERENCE_A_STD},
            name="lora on radial MLP",
        ),
    ]


def _paper_config(first: Rule, preset: str, hybrid_rank: int, train_bessel: bool) -> PeftConfig:
    buffers = [BESSEL_WEIGHTS] if train_bessel else []
    return PeftConfig(rules=[first, *_hybrid_rules(hybrid_rank)], fully_trained_buffers=buffers, preset=preset)


def _linear_rule(rank: int, linear_adapter: str, **mmea_options: Any) -> Rule:
    """The ``o3.Linear`` rule of ``mmea-paper``: MMEA with the reference init unless ``mmea_options`` say otherwise.

    The options are validated once, into :class:`~peft_equi.adapters.mmea.MmeaConfig` (or
    :class:`~peft_equi.adapters.conventional.ConventionalConfig`), and the rule carries the
    options that were set.
    """
    if linear_adapter == "conventional":
        if mmea_options:
            raise ValueError(f"MMEA options {sorted(mmea_options)} do not apply with linear_adapter='conventional'")
        options = ConventionalConfig(rank=rank).model_dump(exclude_unset=True)
        return Rule(adapter="conventional", kinds=["linear"], options=options, name="conventional on o3.Linear")
    if linear_adapter != "mmea":
        raise ValueError(f"linear_adapter must be 'mmea' or 'conventional', not {linear_adapter!r}")
    config = MmeaConfig.model_validate({"rank": rank, "init": "reference", **mmea_options})
    return Rule(
        adapter="mmea",
        kinds=["linear"],
        options=config.model_dump(exclude_unset=True),
        # with a branch switched off (ablations), layers left with nothing to modulate are left alone
        on_unsupported="error" if config.scalar_modulation and config.higher_order_modulation else "skip",
        name="mmea on o3.Linear",
    )


@register_preset("mmea-paper")
def mmea_paper(
    rank: int = 16,
    hybrid_rank: int = 16,
    linear_adapter: Literal["mmea", "conventional"] = "mmea",
    train_bessel: bool = False,
    **mmea_options: Any,
) -> PeftConfig:
    """MMEA's published MACE recipe, reference-code inits (``rank``: width of the MMEA gates).

    ``mmea_options`` are any other :class:`~peft_equi.adapters.mmea.MmeaConfig` options of the
    MMEA adapter on the ``o3.Linear`` layers (``activation``, ``heads``, ``gain``,
    ``gain_sharing``, ``scalar_modulation``, ``higher_order_modulation``, ``init`` (here
    ``"reference"`` unless given), ``shift_init_std``, ``on_missing_invariants``): the
    paper's ablations are this recipe with one of them changed.  With a modulation branch
    switched off, ``o3.Linear`` layers left with nothing to modulate get no adapter.
    ``linear_adapter="conventional"`` puts the not-equivariant dense bottleneck of rank
    ``rank`` there instead (the conventional-adapter ablation).  ``hybrid_rank``: rank of
    the ELoRA and LoRA parts (16 in the paper).  ``train_bessel``: train MACE's Bessel weights
    too (the reference counts them as trainable but never updates them; see the module docstring).
    """
    return _paper_config(_linear_rule(rank, linear_adapter, **mmea_options), "mmea-paper", hybrid_rank, train_bessel)


@register_preset("elora-paper")
def elora_paper(rank: int = 16, train_bessel: bool = False) -> PeftConfig:
    """ELoRA's published MACE recipe, reference-code inits (every ``A ~ N(0, 1)``, ``weights_max``'s ``/ P``).

    ``train_bessel``: train MACE's Bessel weights too (see the module docstring).
    """
    elora = Rule(
        adapter="elora",
        kinds=["linear"],
        options={"rank": rank, "alpha": rank, "init_std": REFERENCE_A_STD, "simplify_inputs": True},
        name="elora on o3.Linear",
    )
    return _paper_config(elora, "elora-paper", rank, train_bessel)


@register_preset("mace-lora")
def mace_lora(rank: int = 4, alpha: float = 1.0) -> PeftConfig:
    """``mace.modules.lora.inject_lora(model, rank, alpha)`` expressed as rules."""
    return PeftConfig(
        rules=[
            Rule(adapter="lora", kinds=["linear"], options={"rank": rank, "alpha": alpha, "init_std": 1.0}),
            Rule(adapter="lora", kinds=["dense"], options={"rank": rank, "alpha": alpha, "init_std": 1e-3}),
        ],
        preset="mace-lora",
    )


#: mace's ``--freeze N``: the MACE modules frozen from level N on (``scripts_utils.get_params_options``).
FREEZE_LEVELS = ((1, "node_embedding"), (5, "interactions"), (6, "products"), (7, "readouts"))


@register_preset("freeze")
def freeze(level: int = 5) -> PeftConfig:
    """mace's ``--freeze level`` as a preset: full fine-tuning of the MACE modules that level leaves trainable.

    Level >= 1 freezes the embedding, >= 5 the interactions, >= 6 the products, >= 7 the readouts
    (levels 2-4 freeze no more than 1; 7 freezes everything, so 1-6 are accepted).  Buffers stay
    frozen, as in mace.
    """
    if not 1 <= level <= 6:
        raise ValueError(f"freeze level must be 1-6 (mace's --freeze; 7 freezes every module), got {level}")
    trained = [f"{module}.*" for threshold, module in FREEZE_LEVELS if level < threshold]
    return PeftConfig(fully_trained=trained, preset="freeze")
