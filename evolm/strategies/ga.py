"""A generational genetic algorithm with elitism, on DEAP's toolbox.

Each generation: the ``elites`` best survive unchanged (``tools.selBest``); the rest of the next
population are parents drawn by tournament (``tools.selTournament``), cloned, crossed in pairs at
``cxpb`` and mutated at ``mutpb`` with the encoding's operators (evolm.strategies.variation). The
mutation scale follows Rechenberg's 1/5th success rule (Rechenberg 1973, "Evolutionsstrategie"):
it grows when more than a fifth of last generation's children beat their parent, and shrinks when
fewer do. For noise genomes this is the GA of Such et al. 2017 ("Deep Neuroevolution",
arXiv:1712.06567): individuals are lists of seeds, and the best is folded into a new base when its
lineage grows long (evolm.strategies.generational keeps the genes and scores valid across that).
"""

from __future__ import annotations

import numpy as np
from deap import tools

from evolm.errors import UsageError
from evolm.individuals import clone_individual
from evolm.seeding import numpy_generator, scoped_python_random
from evolm.strategies.base import check_positive, check_probability
from evolm.strategies.generational import GenerationalStrategy, RebaseUpdate, invalidate

SUCCESS_TARGET = 0.2  # Rechenberg's 1/5th rule
SIGMA_FACTOR = 0.85


def one_fifth_rule(sigma: float, success: float) -> float:
    """The next mutation scale: wider above a 1/5 success rate, narrower below it."""
    if success > SUCCESS_TARGET:
        return sigma / SIGMA_FACTOR
    if success < SUCCESS_TARGET:
        return sigma * SIGMA_FACTOR
    return sigma


class GeneticAlgorithm(GenerationalStrategy):
    name = "ga"

    @staticmethod
    def validate(config) -> None:
        settings = config.strategy
        if config.genome.name not in ("seed", "lowrank", "vector"):
            raise UsageError(
                f"config field genome.name: ga works with seed, lowrank or vector genomes, got {config.genome.name!r}"
            )
        check_probability(config, "cxpb", "mutpb", "indpb")
        if not 0 <= settings.elites < settings.population_size:
            raise UsageError(f"config field strategy.elites must be in [0, population_size), got {settings.elites}")
        check_positive(config, "tournament_size", "resample_every", "max_lineage", "hall_of_fame")
        if settings.crossover not in ("layers", "pairs", "blend", "sbx"):
            raise UsageError(
                f"config field strategy.crossover: unknown crossover {settings.crossover!r} (layers, pairs, blend, sbx)"
            )
        if settings.mutation not in ("gaussian", "polynomial"):
            raise UsageError(
                f"config field strategy.mutation: unknown mutation {settings.mutation!r} (gaussian, polynomial)"
            )

    def breed(self, population: list, generation: int) -> dict:
        success = self._adapt_sigma(population)
        for individual in population:
            individual.parent_fitness = None
        self.population = self._select_and_vary(population, generation)
        metrics = {"mutation_scale": self.sigma}
        if success is not None:
            metrics["success_rate"] = success
        return metrics

    def _adapt_sigma(self, population: list) -> float | None:
        """The 1/5th rule on the children just evaluated; returns their success rate (None: no children)."""
        children = [ind for ind in population if getattr(ind, "parent_fitness", None) is not None]
        if not children or not self.config.strategy.adapt_sigma:
            return None
        success = float(np.mean([ind.fitness.values[0] > ind.parent_fitness for ind in children]))
        self.sigma = one_fifth_rule(self.sigma, success)
        return success

    def _select_and_vary(self, population: list, generation: int) -> list:
        settings = self.config.strategy
        elites = [clone_individual(ind) for ind in tools.selBest(population, settings.elites)]
        with scoped_python_random(self.run_seed, self.name, "select", generation):
            parents = tools.selTournament(population, self.population_size - len(elites), settings.tournament_size)
        return elites + self._vary(parents, generation)

    def _vary(self, parents: list, generation: int) -> list:
        """Clone, cross and mutate ``parents``; each child remembers its parent's fitness for the 1/5th rule."""
        rng = numpy_generator(self.run_seed, self.name, "vary", generation)
        offspring = [clone_individual(p) for p in parents]
        parent_fitness = [p.fitness.values[0] for p in parents]
        # DEAP's vector operators draw from ``random``: scoped and seeded per generation.
        with scoped_python_random(self.run_seed, self.name, "deap-vary", generation):
            for i in range(1, len(offspring), 2):
                if rng.random() < self.config.strategy.cxpb:
                    self.variation.crossover(offspring[i - 1], offspring[i], rng)
                    # A crossed child succeeds only by beating the better of its two parents.
                    best = max(parent_fitness[i - 1], parent_fitness[i])
                    parent_fitness[i - 1] = parent_fitness[i] = best
                    invalidate(offspring[i - 1 : i + 1])
            for child in offspring:
                if rng.random() < self.config.strategy.mutpb:
                    self.variation.mutate(child, rng, self.sigma)
                    invalidate([child])
        for child, fitness in zip(offspring, parent_fitness):
            child.parent_fitness = fitness
        return offspring


__all__ = ["GeneticAlgorithm", "RebaseUpdate", "one_fifth_rule"]
