"""Options of the equivariant LoRA adapter, under their names or Hugging Face peft's."""

from __future__ import annotations

from pydantic import AliasChoices, Field, PositiveFloat, PositiveInt

from peft_equi.core.adapter import AdapterConfig


class LoraConfig(AdapterConfig):
    """``rank`` copies of each irrep in the bottleneck; update scaled by ``alpha / rank``.

    peft's names are accepted too: ``LoraConfig(r=8, lora_alpha=16, target_modules=["linear_1"])``;
    ``target_modules`` (the layers to adapt, as in peft: module names, each matching a module path
    or its last components, or one regular expression matching whole paths) is given to
    :func:`~peft_equi.get_peft_model` with the config, as ``target``.
    """

    rank: PositiveInt = Field(
        8, validation_alias=AliasChoices("rank", "r"), description="copies of each shared irrep in the bottleneck (r)"
    )
    alpha: PositiveFloat | None = Field(
        None,
        validation_alias=AliasChoices("alpha", "lora_alpha"),
        description="scaling numerator (lora_alpha); default: rank (scaling 1)",
    )
    init_std: float = Field(1e-3, ge=0, description="std of the normal init of A (B starts at 0)")
    paths: list[str] | None = Field(None, description="glob patterns of path names to adapt (default: all paths)")
    target_modules: list[str] | str | None = Field(
        None, description="peft's option: module names or one regex of the layers to adapt (default: all)"
    )

    @property
    def r(self) -> int:
        """peft's name of :attr:`rank`."""
        return self.rank

    @property
    def lora_alpha(self) -> float:
        """peft's name of :attr:`alpha` (``rank`` when not set)."""
        return self.rank if self.alpha is None else self.alpha
