"""Where fitness is computed: in-process (``local``) or on Ray actors (``ray``), behind one interface.

An evaluator offers ``evaluate(population, generation) -> fitness tuples`` (results in population
order, whatever the timing), ``apply_update(update)``, ``forward_tokens``, ``stats()`` (transport
figures for logs: actors alive, bytes sent) and ``close()``; ``map`` is DEAP's seam.
"""

from evolm.evaluators.local import LocalEvaluator


def make_evaluator(config, worker):
    """In-process unless the config asks for Ray workers or a Ray cluster address."""
    if config.evaluator.workers or config.evaluator.ray_address:
        from evolm.evaluators.ray import RayEvaluator  # the only module that imports ray

        return RayEvaluator(config, worker)
    return LocalEvaluator(worker)


__all__ = ["LocalEvaluator", "make_evaluator"]
