"""The ask/tell interface every evolm strategy implements, and the fitness shaping they share.

After ``tell`` a strategy may return an *update*: a small, picklable message (seeds and
coefficients, never weights) that every worker applies identically to its own copy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from deap import tools


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

    def bind(self, worker) -> None:
        """Learn what the strategy needs of the genome (sizes) from the driver's worker."""

    def context_generation(self, generation: int) -> int:
        """Which generation's shared fitness context (text batch, prompts) this generation is scored on."""
        return generation

    def best_genes(self):
        """Genes of the model to report and save, relative to the workers' base; None means the base itself."""
        return None

    # Gradient refinement hooks (evolm.refine). The defaults suit a strategy whose model is the base (es).
    def fold_best_into_base(self):
        """Lamarckian refinement: genes to fold into the base before refining (None: refine the base)."""
        return None

    def after_refinement(self, refined_fitness: float) -> None:
        """The base changed under the population (Lamarckian refinement)."""

    def assign_refined_fitness(self, fitness: tuple) -> None:
        """Baldwinian refinement: the reported individual keeps the fitness it reached after refinement."""

    def ask(self, generation: int) -> list:
        raise NotImplementedError

    def tell(self, population: list, generation: int) -> tuple[dict[str, Any], Update | None]:
        """Population fitnesses are already set; returns (metrics, update for the workers or None).

        ``best/mean/std_fitness`` describe the first objective; ``fitness_min/mean/max/std`` are DEAP
        statistics of every objective (a number for one objective, a list for several).
        """
        values = np.array([ind.fitness.values[0] for ind in population], dtype=np.float64)
        finite = values[np.isfinite(values)]
        metrics: dict[str, Any] = {
            "best_fitness": float(finite.max()) if finite.size else -math.inf,
            "mean_fitness": float(finite.mean()) if finite.size else -math.inf,
            "std_fitness": float(finite.std()) if finite.size else 0.0,
        }
        metrics.update(population_statistics(population))
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


def objective_count(config) -> int:
    """nsga2 keeps each fitness term as its own objective; every other strategy sums them into one."""
    from evolm.fitness import objective_count as fitness_objective_count

    return fitness_objective_count(config)  # zero-weight terms are off, as in the weighted sum


def population_statistics(population) -> dict:
    """DEAP ``tools.Statistics`` of every objective over the finite fitness values."""
    statistics = tools.Statistics(key=lambda ind: ind.fitness.values)
    for name, function in (("min", np.min), ("mean", np.mean), ("max", np.max), ("std", np.std)):
        statistics.register(name, function, axis=0)
    finite = [ind for ind in population if all(np.isfinite(ind.fitness.values))]
    if not finite:
        return {}
    record = statistics.compile(finite)
    return {f"fitness_{k}": (float(v[0]) if len(v) == 1 else [float(x) for x in v]) for k, v in record.items()}


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
