"""The ask/tell interface every evolm strategy implements, and the fitness shaping they share.

After ``tell`` a strategy may return an *update*: a small, picklable message (seeds and
coefficients, never weights) that every worker applies identically to its own copy of the model.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, Sequence

import numpy as np


class Update(Protocol):
    """A change of the workers' base weights, applied by each worker in the same way."""

    def apply(self, worker) -> None: ...


class Strategy:
    """Template: subclasses implement ``ask``, ``_tell`` and their state; shared bookkeeping lives here."""

    name = "base"

    def __init__(self, config):
        self.config = config
        self.best_fitness = -math.inf

    @staticmethod
    def validate(config) -> None:
        """Raise UsageError for settings this strategy cannot use."""

    def ask(self, generation: int) -> list:
        raise NotImplementedError

    def tell(self, population: list, generation: int) -> tuple[dict[str, Any], Update | None]:
        """Population fitnesses are already set; returns (metrics, update for the workers or None)."""
        values = np.array([ind.fitness.values[0] for ind in population], dtype=np.float64)
        finite = values[np.isfinite(values)]
        metrics: dict[str, Any] = {
            "best_fitness": float(finite.max()) if finite.size else -math.inf,
            "mean_fitness": float(finite.mean()) if finite.size else -math.inf,
            "std_fitness": float(finite.std()) if finite.size else 0.0,
        }
        self.best_fitness = max(self.best_fitness, metrics["best_fitness"])
        strategy_metrics, update = self._tell(population, values, generation)
        metrics.update(strategy_metrics)
        return metrics, update

    def _tell(self, population, values: np.ndarray, generation: int):
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"best_fitness": self.best_fitness}

    def load_state_dict(self, state: dict) -> None:
        self.best_fitness = state["best_fitness"]


def centered_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5] (Salimans et al. 2017): invariant to any monotone change of fitness.

    -inf (a diverged individual) simply ranks last; ties get the mean of their ranks.
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return np.zeros(n)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    # Average the ranks of tied values so identical fitness gets identical weight.
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < n:
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks / (n - 1) - 0.5
