"""The ask/tell template every evolm strategy implements, and the bookkeeping they share.

One generation: ``ask`` gives the population (DEAP individuals whose genes are compact: seeds,
factors, floats), the evaluator sets their fitness, ``tell`` turns the fitness into metrics and the
next search state. After ``tell`` a strategy may return an *update*: a small, picklable message
(seeds and coefficients, never weights) that every worker applies identically to its own copy of the
model. Fitness shaping lives in :mod:`evolm.strategies.shaping`; each algorithm in its own module.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from deap import tools

from evolm.errors import UsageError

SEED_RANGE = 2**31 - 1  # noise seeds are drawn from [0, SEED_RANGE)


class Update(Protocol):
    """A change of the workers' base weights, applied by each worker in the same way."""

    def apply(self, worker) -> None: ...


class Strategy:
    """Template: a subclass implements ``ask``, ``_tell`` and its state; the shared bookkeeping lives here."""

    name = "base"
    # What choosing this strategy sets for each config field the user leaves unset ("section.field": value),
    # over evolm.config.COMMON_DEFAULTS.
    defaults: dict[str, Any] = {}

    def __init__(self, config):
        self.config = config
        self.run_seed = config.seed  # every draw comes from a generator derived from it (evolm.seeding)
        self.population_size = config.strategy.population_size
        self.best_fitness = -math.inf

    @staticmethod
    def validate(config) -> None:
        """Raise UsageError for settings this strategy cannot use."""

    def bind(self, worker) -> None:
        """Learn what the strategy needs of the genome (sizes) from the driver's worker."""

    def ask(self, generation: int) -> list:
        """The individuals of ``generation``; those whose fitness is invalid get evaluated (DEAP's rule)."""
        raise NotImplementedError

    def tell(self, population: list, generation: int) -> tuple[dict[str, Any], Update | None]:
        """Population fitnesses are already set; returns (metrics, update for the workers or None).

        ``best/mean/std_fitness`` describe the first objective; ``fitness_min/mean/max/std`` are DEAP
        statistics of every objective (a number for one objective, a list for several).
        """
        values = np.array([ind.fitness.values[0] for ind in population], dtype=np.float64)
        metrics: dict[str, Any] = {**fitness_summary(values), **population_statistics(population)}
        self.best_fitness = max(self.best_fitness, metrics["best_fitness"])
        strategy_metrics, update = self._tell(population, values, generation)
        metrics.update(strategy_metrics)
        return metrics, update

    def _tell(self, population, values: np.ndarray, generation: int) -> tuple[dict[str, Any], Update | None]:
        """The algorithm's step; ``values`` are the first objective's, in population order."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"best_fitness": self.best_fitness}

    def load_state_dict(self, state: dict) -> None:
        self.best_fitness = state["best_fitness"]

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


def fitness_summary(values: np.ndarray) -> dict[str, float]:
    """Best, mean and spread of the finite first-objective values (a diverged individual does not count)."""
    finite = values[np.isfinite(values)]
    return {
        "best_fitness": float(finite.max()) if finite.size else -math.inf,
        "mean_fitness": float(finite.mean()) if finite.size else -math.inf,
        "std_fitness": float(finite.std()) if finite.size else 0.0,
    }


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


# Checks the strategies' ``validate`` share; the messages name the config field, as evolm.config's do.


def check_population_at_least(config, minimum: int, strategy: str, reason: str = "") -> None:
    size = config.strategy.population_size
    if size < minimum:
        why = f" ({reason})" if reason else ""
        raise UsageError(
            f"config field strategy.population_size must be at least {minimum} for {strategy}{why}, got {size}"
        )


def check_positive(config, *keys: str) -> None:
    for key in keys:
        value = getattr(config.strategy, key)
        if value <= 0:
            raise UsageError(f"config field strategy.{key} must be positive, got {value}")


def check_probability(config, *keys: str) -> None:
    for key in keys:
        value = getattr(config.strategy, key)
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"config field strategy.{key} must be between 0 and 1, got {value}")
