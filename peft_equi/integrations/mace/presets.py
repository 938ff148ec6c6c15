"""The seed papers' MACE recipes as presets, reproducing their trainable-parameter counts.

* ``mmea-paper`` (MMEA, AAAI 2026): MMEA of rank ``rank`` on every ``o3.Linear``; ELoRA
  (r = alpha = 16) on ``skip_tp`` and on the symmetric contractions' ``weights_max``; LoRA
  (r = 16) on the radial-MLP layers; lower-order contraction weights and the Bessel
  weights trained fully (the contraction weights as a full-rank ELoRA update, so that the
  recipe is mergeable and carries over to cuequivariance).  Only the MMEA gates grow with
  ``rank``.
* ``elora-paper`` (ELoRA, ICML 2025): the same with ELoRA (r = alpha = 16) on the
  ``o3.Linear`` layers too, with consecutive repeated input blocks treated as one
  (``simplify_inputs``), as the papers' MACE version simplified those irreps.
* ``mace-lora``: ``mace.modules.lora.inject_lora(rank, alpha)`` layer for layer: LoRA on
  every ``o3.Linear`` and every dense layer (``nn.Linear``, FC layers), nothing else.  The
  ``A`` init copies MACE's effective init: N(0, 1) on ``o3.Linear`` (MACE's 1e-3 only
  applies to 2-D weights, and e3nn weights are flat) and N(0, 1e-3) on dense layers.

On MACE-OFF23-medium (H, C, O) these give 151,354 (``mmea-paper``, r=16), 201,258 (r=32),
175,880 (``elora-paper``) and 29,396 (``mace-lora``, r=4) trainable parameters.
"""

from __future__ import annotations

from peft_equi.config import PeftConfig, Rule
from peft_equi.registry import register_preset

RADIAL_MLP = "*conv_tp_weights*"
SKIP_TP = "*skip_tp"
BESSEL_WEIGHTS = "*bessel_weights"


def _hybrid_rules(rank: int) -> list[Rule]:
    """The parts of the published recipes that are the same for MMEA and ELoRA."""
    elora = {"rank": rank, "alpha": rank}
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
            # low rank on weights_max; the lower-order weights (weights.*) are trained fully
            options={**elora, "paths": ["*weights_max"], "full_paths": ["*weights.*"]},
            name="elora on contraction weights_max, full lower-order weights",
        ),
        Rule(adapter="lora", target=RADIAL_MLP, kinds=["dense"], options={"rank": rank}, name="lora on radial MLP"),
    ]


def _paper_config(first: Rule, preset: str, hybrid_rank: int) -> PeftConfig:
    return PeftConfig(rules=[first, *_hybrid_rules(hybrid_rank)], train_buffers=[BESSEL_WEIGHTS], preset=preset)


@register_preset("mmea-paper")
def mmea_paper(rank: int = 16, hybrid_rank: int = 16) -> PeftConfig:
    """MMEA's published MACE recipe (``rank``: width of the MMEA gates)."""
    mmea = Rule(adapter="mmea", kinds=["linear"], options={"rank": rank}, name="mmea on o3.Linear")
    return _paper_config(mmea, "mmea-paper", hybrid_rank)


@register_preset("elora-paper")
def elora_paper(rank: int = 16) -> PeftConfig:
    """ELoRA's published MACE recipe."""
    elora = Rule(
        adapter="elora",
        kinds=["linear"],
        options={"rank": rank, "alpha": rank, "simplify_inputs": True},
        name="elora on o3.Linear",
    )
    return _paper_config(elora, "elora-paper", rank)


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
