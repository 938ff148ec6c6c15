"""The fine-tuning tests' config: a small MACE, LoRA r2, two epochs, on the ``files`` fixture's data."""

from pathlib import Path

from peft_equi_train import FinetuneConfig


def finetune_config(files: Path, out: Path, **overrides) -> FinetuneConfig:
    """A :class:`FinetuneConfig` on the ``files`` fixture's model and data writing to ``out``; ``overrides`` win."""
    options = dict(
        model=str(files / "base.model"),
        trust_pickle=True,
        train=files / "data.xyz",
        test=files / "test.xyz",
        valid_fraction=0.25,
        epochs=2,
        batch_size=4,
        eval_batch_size=8,
        output=out,
        progress=False,
        adapter="lora",
        adapter_options={"rank": 2},
    )
    return FinetuneConfig(**(options | overrides))
