"""Options of the ELoRA adapter (defaults: the ELoRA paper's r = alpha = 16, A ~ N(0, 1))."""

from __future__ import annotations

from pydantic import Field, PositiveFloat, PositiveInt

from peft_equi.core.adapter import AdapterConfig


class EloraConfig(AdapterConfig):
    """Rank of each path's update, its scaling ``alpha / rank``, and which paths get one."""

    rank: PositiveInt = Field(16, description="rank of every path's update (not capped by the multiplicities)")
    alpha: PositiveFloat | None = Field(None, description="scaling numerator; default: rank (scaling 1)")
    init_std: float = Field(1.0, ge=0, description="std of the normal init of A (B starts at 0)")
    init_per_coupling_path: bool = Field(
        False,
        description="MACE symmetric contractions: draw A of a path (n_elements, P, channels) with std init_std / P "
        "(P coupling paths), as the ELoRA and MMEA reference code inits weights_max (randn(E, P, r) / P); "
        "no effect on other layer kinds",
    )
    paths: list[str] | None = Field(
        None, description="glob patterns of path names to adapt, e.g. ['*weights_max'] (default: all paths)"
    )
    full_paths: list[str] | None = Field(
        None,
        description="glob patterns of paths given a full-rank (dense, zero-initialised) update instead, "
        "e.g. ['*weights.*'] to train lower-order contraction weights fully",
    )
    simplify_inputs: bool = Field(
        False,
        description="linear layers: treat consecutive input blocks of one irrep as one block (e3nn's "
        "Irreps.simplify()), so their paths into an output share one update, as in the papers' MACE version",
    )
