"""A generational genetic algorithm with elitism on DEAP's toolbox, and NSGA-II for several objectives.

ga: tournament selection (``tools.selTournament``), the encoding's crossover and mutation at
``cxpb`` / ``mutpb``, elites kept (``tools.selBest``), a ``tools.HallOfFame``, and the mutation
scale adapted by Rechenberg's 1/5th success rule. For noise genomes this is the GA of Such et al.
2017 ("Deep Neuroevolution", arXiv:1712.06567): individuals are lists of seeds, and the best is
folded into a new base when its lineage grows long.

nsga2: Deb et al. 2002's elitist non-dominated sorting (``tools.selNSGA2``) over parents and
offspring, which also gives every survivor its crowding distance; parents for the offspring come from
NSGA-II's crowded binary tournament (``tools.selTournamentDCD``: the dominating individual wins, else
the less crowded one), not from ``selTournament``, which would compare objectives lexicographically.
The first Pareto front is logged every generation.

Only individuals whose fitness is invalid are evaluated (DEAP's rule). The fitness batch changes
every ``resample_every`` generations; then every fitness is invalidated, so no individual keeps a
score earned on other text.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from deap import tools

from evolm.errors import UsageError
from evolm.individuals import clone_individual, make_individual, make_vector_individual
from evolm.seeding import numpy_generator, scoped_python_random
from evolm.strategies.base import Strategy, objective_count
from evolm.strategies.variation import SEED_RANGE, NoiseVariation, VectorVariation

SUCCESS_TARGET = 0.2  # Rechenberg's 1/5th rule
SIGMA_FACTOR = 0.85


@dataclass
class RebaseUpdate:
    """Fold ``genes`` into every worker's base weights (the population's genes were rewritten to match)."""

    genes: list

    def apply(self, worker) -> None:
        worker.genome.apply(worker.model, self.genes)
        worker.space.commit()


class GeneticAlgorithm(Strategy):
    name = "ga"

    def __init__(self, config, tensors: int | None = None):
        super().__init__(config)
        settings = config.strategy
        self.population_size = settings.population_size
        self.sigma = settings.sigma
        self.objectives = objective_count(config)
        self.genome_name = config.genome.name
        self.run_seed = config.seed
        self.population: list = []
        self.generation_of_context = None
        if self.genome_name == "vector":
            self.variation = VectorVariation(
                settings.crossover if settings.crossover in ("blend", "sbx") else "blend",
                settings.mutation,
                settings.indpb,
                settings.bound,
            )
            similar = np.array_equal  # DEAP's numpy pitfall: == on arrays is elementwise
        else:
            self.variation = NoiseVariation(
                tensors or 0, settings.crossover if settings.crossover in ("layers", "pairs") else "layers"
            )
            similar = lambda a, b: list(a) == list(b)  # noqa: E731
        self.hall_of_fame = tools.HallOfFame(settings.hall_of_fame, similar=similar)

    @staticmethod
    def validate(config) -> None:
        settings = config.strategy
        if config.genome.name not in ("seed", "lowrank", "vector"):
            raise UsageError(
                f"config field genome.name: ga works with seed, lowrank or vector genomes, got {config.genome.name!r}"
            )
        for key in ("cxpb", "mutpb", "indpb"):
            if not 0.0 <= getattr(settings, key) <= 1.0:
                raise UsageError(f"config field strategy.{key} must be between 0 and 1, got {getattr(settings, key)}")
        if not 0 <= settings.elites < settings.population_size:
            raise UsageError(f"config field strategy.elites must be in [0, population_size), got {settings.elites}")
        for key in ("tournament_size", "resample_every", "max_lineage", "hall_of_fame"):
            if getattr(settings, key) <= 0:
                raise UsageError(f"config field strategy.{key} must be positive, got {getattr(settings, key)}")
        if settings.crossover not in ("layers", "pairs", "blend", "sbx"):
            raise UsageError(
                f"config field strategy.crossover: unknown crossover {settings.crossover!r} (layers, pairs, blend, sbx)"
            )
        if settings.mutation not in ("gaussian", "polynomial"):
            raise UsageError(
                f"config field strategy.mutation: unknown mutation {settings.mutation!r} (gaussian, polynomial)"
            )

    def bind(self, worker) -> None:
        """Learn the genome's size from the worker (tensor count for masks, gene count for vectors)."""
        if self.genome_name == "vector":
            self.vector_size = worker.genome.size
            if self.vector_size > 200_000:
                warnings.warn(
                    f"vector genome of {self.vector_size:,} genes: DEAP's operators loop per gene and will be slow; "
                    "narrow it with --params",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            self.variation.full = (1 << len(worker.space.tensors)) - 1
            self.variation.tensors = len(worker.space.tensors)

    def context_generation(self, generation: int) -> int:
        return generation - generation % self.config.strategy.resample_every

    def _initial_population(self, generation: int) -> list:
        rng = numpy_generator(self.run_seed, self.name, "init")
        if self.genome_name == "vector":
            genes = rng.normal(0.0, self.sigma, (self.population_size, self.vector_size)).astype(np.float32)
            genes[0] = 0.0  # the unperturbed base model is one of the starting individuals
            return [make_vector_individual(g, self.objectives) for g in genes]
        seeds = rng.integers(0, SEED_RANGE, self.population_size)
        return [
            make_individual([] if i == 0 else [(int(seeds[i]), self.sigma)], self.objectives)
            for i in range(self.population_size)
        ]

    def ask(self, generation: int) -> list:
        if not self.population:
            self.population = self._initial_population(generation)
        context = self.context_generation(generation)
        if context != self.generation_of_context:
            for individual in self.population:
                del individual.fitness.values
            self.generation_of_context = context
        return self.population

    def _vary(self, parents: list, generation: int) -> list:
        """Clone, cross and mutate ``parents``; each child remembers its parent's fitness for the 1/5th rule."""
        rng = numpy_generator(self.run_seed, self.name, "vary", generation)
        offspring = [clone_individual(p) for p in parents]
        parent_fitness = [p.fitness.values[0] for p in parents]
        with scoped_python_random(self.run_seed, self.name, "deap-vary", generation):
            for i in range(1, len(offspring), 2):
                if rng.random() < self.config.strategy.cxpb:
                    self.variation.crossover(offspring[i - 1], offspring[i], rng)
                    best = max(parent_fitness[i - 1], parent_fitness[i])
                    parent_fitness[i - 1] = parent_fitness[i] = best
                    del offspring[i - 1].fitness.values, offspring[i].fitness.values
            for child in offspring:
                if rng.random() < self.config.strategy.mutpb:
                    self.variation.mutate(child, rng, self.sigma)
                    if child.fitness.valid:
                        del child.fitness.values
        for child, fitness in zip(offspring, parent_fitness):
            child.parent_fitness = fitness
        return offspring

    def _adapt_sigma(self, population: list) -> float | None:
        children = [ind for ind in population if getattr(ind, "parent_fitness", None) is not None]
        if not children or not self.config.strategy.adapt_sigma:
            return None
        success = float(np.mean([ind.fitness.values[0] > ind.parent_fitness for ind in children]))
        if success > SUCCESS_TARGET:
            self.sigma /= SIGMA_FACTOR
        elif success < SUCCESS_TARGET:
            self.sigma *= SIGMA_FACTOR
        return success

    def _select_and_vary(self, population: list, generation: int) -> list:
        settings = self.config.strategy
        elites = [clone_individual(ind) for ind in tools.selBest(population, settings.elites)]
        with scoped_python_random(self.run_seed, self.name, "select", generation):
            parents = tools.selTournament(population, self.population_size - len(elites), settings.tournament_size)
        return elites + self._vary(parents, generation)

    def _tell(self, population, values: np.ndarray, generation: int):
        self.hall_of_fame.update(population)
        success = self._adapt_sigma(population)
        for individual in population:
            individual.parent_fitness = None
        self.best = clone_individual(tools.selBest(population, 1)[0])
        self.population = self._select_and_vary(population, generation)
        metrics = {"mutation_scale": self.sigma}
        if success is not None:
            metrics["success_rate"] = success
        return metrics, self._maybe_rebase()

    def _maybe_rebase(self):
        if self.genome_name == "vector" or len(self.best) <= self.config.strategy.max_lineage:
            return None
        return RebaseUpdate(self.fold_best_into_base())

    def fold_best_into_base(self):
        base_genes = list(self.best)
        for individual in self._members():
            individual[:] = self.variation.rebased(individual, base_genes)
        return base_genes

    def after_refinement(self, refined_fitness: float) -> None:
        # Every weight moved with the refined base: scores earned before are stale.
        for individual in self._members():
            if individual.fitness.valid:
                del individual.fitness.values

    def assign_refined_fitness(self, fitness: tuple) -> None:
        for individual in self.population:
            if list(individual) == list(self.best):
                individual.fitness.values = fitness
                break
        self.best.fitness.values = fitness

    def _members(self) -> list:
        """Every individual whose genes are relative to the base (rewritten together at a rebase)."""
        return [*self.population, *self.hall_of_fame.items, self.best]

    def best_genes(self):
        return list(self.best) if self.genome_name != "vector" else np.asarray(self.best, dtype=np.float32)

    def state_dict(self) -> dict:
        """Everything the next generation depends on: population (with fitness and parent_fitness), hall of fame, best, sigma."""
        from evolm.checkpoint import individual_to_tree

        return {
            **super().state_dict(),
            "sigma": self.sigma,
            "generation_of_context": self.generation_of_context,
            "population": [individual_to_tree(ind) for ind in self.population],
            "hall_of_fame": [individual_to_tree(ind) for ind in self.hall_of_fame.items],
            "best": individual_to_tree(self.best) if hasattr(self, "best") else None,
            "offspring": [individual_to_tree(ind) for ind in getattr(self, "offspring", [])],
        }

    def load_state_dict(self, state: dict) -> None:
        from evolm.checkpoint import individual_from_tree

        super().load_state_dict(state)
        self.sigma = state["sigma"]
        self.generation_of_context = state["generation_of_context"]
        self.population = [individual_from_tree(tree) for tree in state["population"]]
        # DEAP's HallOfFame: items best first, keys (their fitnesses) ascending.
        self.hall_of_fame.items = [individual_from_tree(tree) for tree in state["hall_of_fame"]]
        self.hall_of_fame.keys = [ind.fitness for ind in reversed(self.hall_of_fame.items)]
        if state["best"] is not None:
            self.best = individual_from_tree(state["best"])
        if state["offspring"]:
            self.offspring = [individual_from_tree(tree) for tree in state["offspring"]]


class NSGA2(GeneticAlgorithm):
    """NSGA-II (Deb et al. 2002): survivors by ``tools.selNSGA2``, offspring by crowded tournament and variation."""

    name = "nsga2"

    @staticmethod
    def validate(config) -> None:
        GeneticAlgorithm.validate(config)
        if config.strategy.population_size < 4:
            raise UsageError(
                f"config field strategy.population_size must be at least 4 for nsga2 (its crowded "
                f"tournament draws parents in fours), got {config.strategy.population_size}"
            )

    def ask(self, generation: int) -> list:
        population = super().ask(generation)
        return population + getattr(self, "offspring", [])

    def _select_and_vary(self, population, generation):
        survivors = tools.selNSGA2(population, self.population_size)  # also sets each survivor's crowding_dist
        with scoped_python_random(self.run_seed, self.name, "select", generation):
            parents = crowded_tournament(survivors, self.population_size)
        self.offspring = self._vary(parents, generation)
        return survivors

    def _tell(self, population, values, generation):
        metrics, update = super()._tell(population, values, generation)
        front = tools.sortNondominated(self.population, len(self.population), first_front_only=True)[0]
        metrics["pareto_front"] = sorted([list(ind.fitness.values) for ind in front])
        return metrics, update

    def _members(self) -> list:
        return [*super()._members(), *self.offspring]


def crowded_tournament(individuals: list, k: int) -> list:
    """``k`` parents by NSGA-II's crowded binary tournament (``tools.selTournamentDCD``).

    DEAP's version picks in fours from two shuffles of the population, so it is asked for the largest
    multiple of 4 it accepts (at most the population) as many times as ``k`` needs; the first ``k`` are kept.
    Needs ``crowding_dist`` on every fitness (``tools.selNSGA2`` sets it) and at least 4 individuals.
    """
    round_size = len(individuals) - len(individuals) % 4
    chosen: list = []
    while len(chosen) < k:
        chosen += tools.selTournamentDCD(individuals, round_size)
    return chosen[:k]
