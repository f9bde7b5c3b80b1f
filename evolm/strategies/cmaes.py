"""CMA-ES (Hansen & Ostermeier 2001, "Completely Derandomized Self-Adaptation in Evolution Strategies",
Evolutionary Computation 9(2)) through DEAP's ``cma.Strategy``, for small explicit genomes.

Each generation samples λ points ``m + sigma * N(0, C)``; the update moves the mean ``m`` to the
weighted recombination of the μ best, and adapts ``C`` (rank-one and rank-μ updates along evolution
paths) and ``sigma`` (cumulative step-size adaptation).

The covariance matrix is size² floats and is eigendecomposed every generation, so this strategy is
for the ``vector`` encoding over at most a few thousand genes; choosing it chooses, unless set, the
LayerNorm gains and biases and the output bias (``CMAES.defaults``). DEAP draws from
the global ``numpy.random``; every call runs under a scoped, seeded state so runs repeat exactly.

CMA's update uses only the ranks of the λ offspring (its μ = λ/2 best get the recombination
weights), so a diverged individual (a non-finite fitness) is ranked last rather than dropped: the
update always sees λ individuals. When every individual diverges there is no ranking to learn
from; the distribution stays where it is and the step size is halved.
"""

from __future__ import annotations

import numpy as np
from deap import cma

from evolm.errors import UsageError
from evolm.individuals import make_vector_individual
from evolm.seeding import scoped_numpy_random
from evolm.strategies.base import Strategy, check_population_at_least
from evolm.strategies.shaping import best_first

MAX_GENES = 5000
ALL_DIVERGED_SIGMA_FACTOR = 0.5  # smaller steps when a whole generation diverged


class CMAES(Strategy):
    name = "cmaes"
    # CMA-ES keeps a size x size covariance and decomposes it every generation, so it searches an explicit
    # vector over a small subset: the LayerNorm gains and biases and the output bias (896 genes on the default
    # model, 256 on the LSTM). 24 is Hansen's lambda = 4 + 3 ln(896); sigma 0.3 measured best of 0.02 / 0.1 / 0.3.
    defaults = {
        "genome.name": "vector",
        "genome.params": "norm|head.bias",
        "strategy.population_size": 24,
        "strategy.sigma": 0.3,
    }

    def __init__(self, config):
        super().__init__(config)
        self.cma = None

    @staticmethod
    def validate(config) -> None:
        if config.genome.name != "vector":
            raise UsageError(
                f"config field genome.name: cmaes works with the vector genome, got {config.genome.name!r} "
                f"(leave genome.name unset and cmaes chooses it)"
            )
        check_population_at_least(config, 2, "cmaes")

    def bind(self, worker) -> None:
        size = worker.genome.size
        if size > MAX_GENES:
            raise UsageError(
                f"config field genome.params selects {size:,} parameters; cmaes handles at most {MAX_GENES:,} "
                f"(its covariance is size²): narrow it, e.g. --params 'norm|head.bias'"
            )
        self.cma = cma.Strategy(centroid=np.zeros(size), sigma=self.config.strategy.sigma, lambda_=self.population_size)

    def ask(self, generation: int) -> list:
        # DEAP draws the λ samples from the global numpy.random: scoped and seeded per generation.
        with scoped_numpy_random(self.run_seed, "cmaes", generation):
            return self.cma.generate(make_vector_individual)

    def _tell(self, population, values, generation):
        finite = np.isfinite(values)
        if finite.any():
            with scoped_numpy_random(self.run_seed, "cmaes-update", generation):
                self.cma.update(ranked_for_update(population, values))
        else:
            self.cma.sigma *= ALL_DIVERGED_SIGMA_FACTOR
        return {"sigma": float(self.cma.sigma), "diverged": int((~finite).sum())}, None

    def best_genes(self):
        return np.asarray(self.cma.centroid, dtype=np.float32)

    def state_dict(self) -> dict:
        """DEAP's CMA state (centroid, sigma, paths, covariance...): arrays go through safetensors via pack_tree."""
        return {**super().state_dict(), "cma": dict(vars(self.cma))}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        vars(self.cma).update(state["cma"])


def ranked_for_update(population, values) -> list:
    """Copies of every individual, best first, whose fitness is minus their rank; non-finite values rank last.

    CMA only reads ranks, so the update is the one the finite individuals' order gives, with the
    diverged ones as the worst; ties (diverged ones among themselves) keep population order.
    """
    ranked = []
    for rank, index in enumerate(best_first(values)):
        individual = make_vector_individual(population[int(index)])
        individual.fitness.values = (-float(rank),)
        ranked.append(individual)
    return ranked
