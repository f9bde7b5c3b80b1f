"""In-process parallel evaluation: the driver's worker and replicas of it, one per thread.

PyTorch releases the GIL inside its operators, so N threads each running small forwards with one
intra-op thread keep N cores busy. On 2 CPU cores, two threads of 16 x 64 forwards ran 1.2-1.3x
faster than the best single forward over batch shapes with two intra-op threads
(``benchmarks/throughput.py``): a small batch splits poorly across cores, two batches do not.

Each replica is a whole worker (its own model, genome buffers and fitness) built by the driver
worker's factory. Updates are applied on the driver's worker only; before every evaluation each
replica copies the driver's evolving tensors (a memory copy in one process: cheaper than replaying
the update, and exact whatever changed the driver: an update, a refinement, a restored checkpoint).
Each replica scores a contiguous slice of the population; results come back in population order.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from evolm.errors import UsageError
from evolm.evaluators.split import aligned_slices
from evolm.individuals import genes_of


class ThreadEvaluator:
    """Evaluates on ``evaluator.workers`` in-process workers, one thread each; the same interface as
    :class:`~evolm.evaluators.local.LocalEvaluator`."""

    def __init__(self, config, worker):
        settings = config.evaluator
        factory = getattr(worker, "factory", None)
        if factory is None:
            raise UsageError(
                "config field evaluator.backend: threads needs a worker factory to build replicas "
                "(runs started by evolm run, evolm.run or evolm.evolve have one)"
            )
        self.worker = worker
        self.replicas = [worker] + [factory(config) for _ in range(max(1, settings.workers) - 1)]
        # Intra-op threads are a process-wide setting (set after the factories, which may set their own).
        torch.set_num_threads(max(1, settings.threads_per_worker))
        self._pool = ThreadPoolExecutor(len(self.replicas), thread_name_prefix="evolm-worker")
        # Slices start at multiples of the batched-pass size, as on Ray: the same sub-batches as in-process.
        self._batch_multiple = max(1, getattr(worker, "population_chunk", 0) or 1)

    def _slices(self, count: int) -> list[tuple[int, int]]:
        return aligned_slices(count, len(self.replicas), self._batch_multiple)

    def _copy_driver(self) -> None:
        # Only the driver steps an optimiser; a genome's step sizes (snes) travel with the weights.
        sizes = getattr(self.worker.genome, "step_sizes", None)
        optimizer = None if sizes is None else {"center": None, "step_sizes": sizes.state_dict()}
        state = {"tensors": self.worker.space.tensors, "optimizer": optimizer}
        for replica in self.replicas[1:]:
            replica.load_sync_state(state)

    def evaluate(self, population: list, generation: int) -> list:
        self._copy_driver()
        genes = [genes_of(individual) for individual in population]
        futures = [
            self._pool.submit(replica.evaluate, genes[start:stop], generation)
            for replica, (start, stop) in zip(self.replicas, self._slices(len(genes)))
        ]
        results = []
        for future in futures:
            results.extend(future.result())
        return results

    def apply_update(self, update) -> None:
        self.worker.apply_update(update)

    @property
    def forward_tokens(self) -> int:
        return sum(replica.forward_tokens for replica in self.replicas)

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        self._pool.shutdown(wait=True)
