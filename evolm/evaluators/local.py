"""In-process evaluation: one worker, individuals scored one after another."""

from __future__ import annotations

from evolm.individuals import genes_of


class LocalEvaluator:
    """Evaluates on the driver's own worker."""

    def __init__(self, worker):
        self.worker = worker

    def evaluate(self, population: list, generation: int) -> list[tuple[float, ...]]:
        return self.worker.evaluate([genes_of(ind) for ind in population], generation)

    def apply_update(self, update) -> None:
        self.worker.apply_update(update)

    @property
    def forward_tokens(self) -> int:
        return self.worker.forward_tokens

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass
