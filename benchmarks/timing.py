"""Timing shared by the benchmarks: medians of functions called in turn, so machine drift hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable


def interleaved_medians(
    fns: dict[Hashable, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[Hashable, float]:
    """Median wall time of each function over ``repeats`` rounds (``warmup`` untimed calls each first).

    TorchScript functions need a few warm-up calls: the profiling executor optimises the graph
    after the first runs.
    """
    samples: dict[Hashable, list[float]] = {key: [] for key in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in samples.items()}
