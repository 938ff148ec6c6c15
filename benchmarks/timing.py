"""Timing shared by the benchmarks: medians of functions called in turn, so machine drift hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable


def interleaved_medians(fns: dict[Hashable, Callable[[], object]], repeats: int) -> dict[Hashable, float]:
    """Median wall time of each function over ``repeats`` rounds (one warm-up call each first)."""
    samples: dict[Hashable, list[float]] = {key: [] for key in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in samples.items()}
