"""OpenAI-ES (Salimans et al. 2017, "Evolution Strategies as a Scalable Alternative to Reinforcement
Learning", arXiv:1703.03864).

Antithetic pairs ``center ± sigma * eps`` with ``eps`` regenerated from an integer seed,
centered-rank fitness shaping, and an Adam step on the gradient estimate
``g = 1/(N sigma) * sum_i rank_i * eps_i`` (``strategy.optimizer = "sgd"``: the plain step
``theta += lr * g`` of Qiu et al. 2025, "Evolution Strategies at Scale: LLM Fine-Tuning Beyond
Reinforcement Learning", arXiv:2509.24372, which keeps no optimiser state). The update travels to
workers as ``(seeds, coefficients)``: each worker regenerates the noise and takes the identical step.

The step runs tensor by tensor and chunk by chunk (the genome's noise chunks): no gradient tensor
the size of the model ever exists, so an ES worker holds the weights' undo snapshot, the optimiser
moments (Adam) and scratch the size of one chunk, whatever the population.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evolm.errors import UsageError
from evolm.individuals import make_individual
from evolm.seeding import numpy_generator
from evolm.strategies.base import SEED_RANGE, Strategy
from evolm.strategies.shaping import centered_ranks


@dataclass
class EsUpdate:
    """Gradient ascent direction ``sum_k coefficient_k * eps(seed_k)``, applied with each worker's center optimiser."""

    seeds: list[int]
    coefficients: list[float]

    def apply(self, worker) -> None:
        space = worker.space
        optimizer = worker.center_optimizer()
        for index in range(len(space.tensors)):
            optimizer.step_tensor(index, worker.genome.combined_noise_chunks(self.seeds, self.coefficients, index))
        space.commit()


class OpenAIES(Strategy):
    name = "es"

    def __init__(self, config):
        super().__init__(config)
        self.sigma = config.strategy.sigma
        self._seeds: list[int] = []

    @staticmethod
    def validate(config) -> None:
        if config.strategy.population_size % 2:
            raise UsageError(
                f"config field strategy.population_size must be even for es (antithetic pairs), "
                f"got {config.strategy.population_size}"
            )
        if config.genome.name not in ("seed", "lowrank"):
            raise UsageError(
                f"config field genome.name: es works with the seed or lowrank genome, got {config.genome.name!r}"
            )

    def ask(self, generation: int) -> list:
        # Antithetic sampling: each seed's noise is tried with both signs, which lowers the estimate's variance.
        rng = numpy_generator(self.run_seed, "es-noise", generation)
        self._seeds = [int(s) for s in rng.integers(0, SEED_RANGE, self.population_size // 2)]
        population = []
        for seed in self._seeds:
            population.append(make_individual([(seed, self.sigma)]))
            population.append(make_individual([(seed, -self.sigma)]))
        return population

    def _tell(self, population, values: np.ndarray, generation: int):
        shaped = centered_ranks(values)
        plus, minus = shaped[0::2], shaped[1::2]
        # g = 1/(N sigma) sum_i rank_i eps_i; the pair (+eps, -eps) contributes (rank+ - rank-) eps.
        scale = 1.0 / (len(values) * self.sigma)
        coefficients = [float(c) for c in (plus - minus) * scale]
        return {"sigma": self.sigma}, EsUpdate(list(self._seeds), coefficients)
