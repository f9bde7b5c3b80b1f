"""Where fitness is computed: in-process (``local``), on in-process replicas in threads (``threads``)
or on Ray actors (``ray``), behind one interface.

An evaluator offers ``evaluate(population, generation) -> fitness tuples`` (results in population
order, whatever the timing), ``apply_update(update)``, ``forward_tokens``, ``stats()`` (transport
figures for logs: actors alive, bytes sent) and ``close()``. The engine hands a whole generation to
``evaluate`` (DEAP's rule: only individuals whose fitness is invalid), which is where the work is
split across workers; there is no per-item ``map``.
"""

import math

from evolm.evaluators.local import LocalEvaluator


def aligned_slices(count: int, pieces: int, multiple: int) -> list[tuple[int, int]]:
    """At most ``pieces`` contiguous ``(start, stop)`` slices covering ``range(count)``, each starting
    at a multiple of ``multiple`` (a worker's batched-pass size), so every worker forms the same
    sub-batches the in-process evaluator would: the same shapes, the same arithmetic."""
    size = max(1, math.ceil(count / max(1, pieces)))
    size = math.ceil(size / multiple) * multiple
    return [(start, min(count, start + size)) for start in range(0, count, size)]


def make_evaluator(config, worker):
    """In-process unless the config asks for workers (Ray actors, or threads) or a Ray cluster address."""
    if config.evaluator.backend == "threads" and config.evaluator.workers > 1:
        from evolm.evaluators.threads import ThreadEvaluator

        return ThreadEvaluator(config, worker)
    if config.evaluator.backend == "ray" and (config.evaluator.workers or config.evaluator.ray_address):
        # ray, ray_actor and ray_cluster are the only modules that import ray
        from evolm.evaluators.ray import RayEvaluator

        return RayEvaluator(config, worker)
    return LocalEvaluator(worker)


__all__ = ["LocalEvaluator", "aligned_slices", "make_evaluator"]
