"""CMA-ES (Hansen & Ostermeier 2001) through DEAP's ``cma.Strategy``, for small explicit genomes.

The covariance matrix is size² floats, so this strategy is for the ``vector`` encoding over at
most a few thousand genes (biases and norms, say). DEAP draws from the global ``numpy.random``;
every call runs under a scoped, seeded state so runs repeat exactly.
"""

from __future__ import annotations

import numpy as np
from deap import cma

from evolm.errors import UsageError
from evolm.individuals import make_vector_individual
from evolm.seeding import scoped_numpy_random
from evolm.strategies.base import Strategy

MAX_GENES = 5000


class CMAES(Strategy):
    name = "cmaes"

    def __init__(self, config):
        super().__init__(config)
        self.cma = None
        self.run_seed = config.seed

    @staticmethod
    def validate(config) -> None:
        if config.genome.name != "vector":
            raise UsageError(f"config field genome.name: cmaes works with the vector genome, got {config.genome.name!r}")

    def bind(self, worker) -> None:
        size = worker.genome.size
        if size > MAX_GENES:
            raise UsageError(
                f"config field genome.params selects {size:,} parameters; cmaes handles at most {MAX_GENES:,} "
                f"(its covariance is size²): narrow it, e.g. --params 'bias|norm'"
            )
        self.cma = cma.Strategy(centroid=np.zeros(size), sigma=self.config.strategy.sigma,
                                lambda_=self.config.strategy.population_size)

    def ask(self, generation: int) -> list:
        with scoped_numpy_random(self.run_seed, "cmaes", generation):
            return self.cma.generate(make_vector_individual)

    def _tell(self, population, values, generation):
        finite = [ind for ind in population if np.isfinite(ind.fitness.values[0])]
        with scoped_numpy_random(self.run_seed, "cmaes-update", generation):
            self.cma.update(finite or population)
        return {"sigma": float(self.cma.sigma)}, None

    def best_genes(self):
        return np.asarray(self.cma.centroid, dtype=np.float32)

    def state_dict(self) -> dict:
        """DEAP's CMA state (centroid, sigma, paths, covariance...): arrays go through safetensors via pack_tree."""
        return {**super().state_dict(), "cma": dict(vars(self.cma))}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        vars(self.cma).update(state["cma"])
