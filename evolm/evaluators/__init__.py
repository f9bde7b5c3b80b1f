"""Where fitness is computed: in-process (``local``), on in-process replicas in threads (``threads``)
or on Ray actors (``ray``; pbt's members train on Ray actors of their own, ``pbt_ray``), behind one interface.

An evaluator offers ``evaluate(population, generation) -> fitness tuples`` (results in population
order, whatever the timing), ``apply_update(update)``, ``forward_tokens``, ``stats()`` (transport
figures for logs: actors alive, bytes sent) and ``close()``. The engine hands a whole generation to
``evaluate`` (DEAP's rule: only individuals whose fitness is invalid), which is where the work is
split across workers; there is no per-item ``map``.
"""

from evolm.evaluators.local import LocalEvaluator
from evolm.evaluators.split import aligned_slices
from evolm.evaluators.threads import ThreadEvaluator
from evolm.strategies.pbt import members_on_ray


def make_evaluator(config, worker):
    """In-process unless the config asks for workers (Ray actors, or threads) or a Ray cluster address."""
    if config.evaluator.backend == "threads" and config.evaluator.workers > 1:
        return ThreadEvaluator(config, worker)
    if members_on_ray(config):  # pbt's members live in Ray actors and train there
        from evolm.evaluators.pbt_ray import PBTRayEvaluator

        return PBTRayEvaluator(config, worker)
    if config.evaluator.backend == "ray" and (config.evaluator.workers or config.evaluator.ray_address):
        # Imported on use: ray (with ray_actor, ray_cluster and shipping, the only modules that import it) is heavy.
        from evolm.evaluators.ray import RayEvaluator

        return RayEvaluator(config, worker)
    return LocalEvaluator(worker)


__all__ = ["LocalEvaluator", "aligned_slices", "make_evaluator"]
