"""Where fitness is computed: in-process (``local``), on in-process replicas in threads (``threads``)
or on Ray actors (``ray``), behind one interface.

An evaluator offers ``evaluate(population, generation) -> fitness tuples`` (results in population
order, whatever the timing), ``apply_update(update)``, ``forward_tokens``, ``stats()`` (transport
figures for logs: actors alive, bytes sent) and ``close()``; ``map`` is DEAP's seam.
"""

from evolm.evaluators.local import LocalEvaluator


def make_evaluator(config, worker):
    """In-process unless the config asks for workers (Ray actors, or threads) or a Ray cluster address."""
    if config.evaluator.backend == "threads" and config.evaluator.workers > 1:
        from evolm.evaluators.threads import ThreadEvaluator

        return ThreadEvaluator(config, worker)
    if config.evaluator.backend == "ray" and (config.evaluator.workers or config.evaluator.ray_address):
        from evolm.evaluators.ray import RayEvaluator  # the only module that imports ray

        return RayEvaluator(config, worker)
    return LocalEvaluator(worker)


__all__ = ["LocalEvaluator", "make_evaluator"]
