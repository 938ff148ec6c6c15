"""Timing shared by the benchmarks: medians of functions called in turn, so machine drift hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable


def interleaved_medians(
    fns: dict[Hashable, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[Hashable, float]:
    """Median wall time of each function over ``repeats`` rounds (see :func:`interleaved_samples`)."""
    return {key: statistics.median(values) for key, values in interleaved_samples(fns, repeats, warmup).items()}


def interleaved_samples(
    fns: dict[Hashable, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[Hashable, list[float]]:
    """Wall time of each function in each of ``repeats`` rounds (``warmup`` untimed calls each first).

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
    return samples


def round_ratios(samples: dict[Hashable, list[float]], key: Hashable, reference: Hashable) -> tuple[float, ...]:
    """Quartiles (25, 50, 75 %) over rounds of ``key``'s time over ``reference``'s time in the same round.

    A ratio within a round cancels the machine's slower and faster spells, which the ratio of
    two medians does not; the quartiles show what is left of the noise.
    """
    ratios = [a / b for a, b in zip(samples[key], samples[reference], strict=True)]
    return tuple(statistics.quantiles(ratios, n=4, method="inclusive")) if len(ratios) > 1 else (ratios[0],) * 3
