"""Irreducible representations of O(3) as small immutable values, independent of any backend.

An irrep of O(3) is labelled by its degree ``l`` (dimension ``2l + 1``) and its parity
``p = +1`` (even, ``e``) or ``-1`` (odd, ``o``).  A feature vector is a direct sum of
*blocks* ``mul x (l, p)``: ``mul`` copies ("channels") of one irrep.  Unlike e3nn's
``Irreps.simplify()``, repeated blocks (``128x0e+128x0e``) are kept as they are, because
weight layouts of real layers follow the unsimplified block list.

Two memory layouts exist for a block (the :class:`Layout` enum): ``mul_ir`` (e3nn: the
block is a ``(mul, 2l+1)`` array) and ``ir_mul`` (cuequivariance: ``(2l+1, mul)``).
Blocks are contiguous and in order in both layouts; only the order inside a block differs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

_IRREP_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)\s*([eo])\s*$")


class Layout(str, Enum):
    """Order of the components inside one ``mul x ir`` block."""

    MUL_IR = "mul_ir"
    IR_MUL = "ir_mul"


@dataclass(frozen=True, order=True)
class Irrep:
    """An irrep ``(l, p)`` of O(3); ``p`` is ``1`` (even) or ``-1`` (odd)."""

    l: int  # noqa: E741 - the standard name of the degree
    p: int

    def __post_init__(self) -> None:
        if self.l < 0 or self.p not in (1, -1):
            raise ValueError(f"invalid irrep l={self.l}, p={self.p}: need l >= 0 and p in (1, -1)")

    @property
    def dim(self) -> int:
        """Number of components, ``2l + 1``."""
        return 2 * self.l + 1

    @property
    def is_invariant(self) -> bool:
        """True for ``0e``, the only irrep left unchanged by every rotation and inversion."""
        return self.l == 0 and self.p == 1

    def __str__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"


@dataclass(frozen=True)
class MulIrrep:
    """A block of ``mul`` channels of one irrep."""

    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        """Number of components of the block, ``mul * (2l + 1)``."""
        return self.mul * self.ir.dim

    def __str__(self) -> str:
        return f"{self.mul}x{self.ir}"


class Irreps(tuple):
    """An ordered, immutable tuple of :class:`MulIrrep` blocks (never simplified).

    Build it from a string (``"128x0e+64x1o"``), from ``(mul, (l, p))`` pairs, or from
    any object whose iteration yields ``(mul, ir)`` with ``ir.l`` and ``ir.p`` attributes
    (e3nn ``Irreps``, also the copies bundled inside ``torch.package`` archives).
    """

    def __new__(cls, value: Any = ()) -> Irreps:
        if isinstance(value, Irreps):
            return value
        if isinstance(value, str):
            return super().__new__(cls, _parse(value))
        return super().__new__(cls, (_to_block(item) for item in value))

    @property
    def dim(self) -> int:
        """Total number of components."""
        return sum(block.dim for block in self)

    @property
    def num_channels(self) -> int:
        """Total multiplicity: the number of ``(l, channel)`` pairs."""
        return sum(block.mul for block in self)

    def offsets(self) -> list[int]:
        """Start index of each block in a flat feature vector (same in both layouts)."""
        return _starts(block.dim for block in self)

    def channel_offsets(self) -> list[int]:
        """Start index of each block in the flat list of channels."""
        return _starts(block.mul for block in self)

    def blocks(self) -> Iterator[tuple[int, MulIrrep]]:
        """Enumerate ``(index, block)``."""
        return enumerate(self)

    def __str__(self) -> str:
        return "+".join(str(block) for block in self) or "0x0e"

    def __repr__(self) -> str:
        return f"Irreps('{self}')"


def _starts(sizes: Iterable[int]) -> list[int]:
    starts, total = [], 0
    for size in sizes:
        starts.append(total)
        total += size
    return starts


def _parse(text: str) -> Iterable[MulIrrep]:
    text = text.strip()
    if not text:
        return ()
    blocks = []
    for part in text.split("+"):
        match = _IRREP_RE.match(part)
        if match is None:
            raise ValueError(f"cannot parse irreps {text!r}: bad block {part.strip()!r} (expected like '16x1o')")
        mul, l, parity = match.groups()  # noqa: E741
        blocks.append(MulIrrep(int(mul) if mul is not None else 1, Irrep(int(l), 1 if parity == "e" else -1)))
    return tuple(blocks)


def _to_block(item: Any) -> MulIrrep:
    if isinstance(item, MulIrrep):
        return item
    mul, ir = item
    if isinstance(ir, Irrep):
        return MulIrrep(int(mul), ir)
    if isinstance(ir, tuple):
        return MulIrrep(int(mul), Irrep(int(ir[0]), int(ir[1])))
    return MulIrrep(int(mul), Irrep(int(ir.l), int(ir.p)))
