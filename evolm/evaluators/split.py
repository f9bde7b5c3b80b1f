"""Splitting a generation across workers: contiguous slices whose results are written back by index.

EvoTorch's one evaluation seam for Ray, in small: split the population, map the slices to workers,
write each result back at its index, so results come out in population order whatever the timing.
"""

from __future__ import annotations

import math


def aligned_slices(count: int, pieces: int, multiple: int) -> list[tuple[int, int]]:
    """At most ``pieces`` contiguous ``(start, stop)`` slices covering ``range(count)``, each starting
    at a multiple of ``multiple`` (a worker's batched-pass size), so every worker forms the same
    sub-batches the in-process evaluator would: the same shapes, the same arithmetic."""
    size = max(1, math.ceil(count / max(1, pieces)))
    size = math.ceil(size / multiple) * multiple
    return [(start, min(count, start + size)) for start in range(0, count, size)]
