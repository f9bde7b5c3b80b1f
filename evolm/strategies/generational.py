"""What a strategy that carries a DEAP population from generation to generation (ga, nsga2) must keep true.

Its individuals' genes are relative to the workers' base weights, and their fitness to one fitness
batch. This module keeps both true while the algorithm (evolm.strategies.ga, .nsga2) only selects
and varies:

- the fitness batch changes every ``resample_every`` generations; then every fitness is invalidated,
  so no individual keeps a score earned on other text (only invalid ones are evaluated, DEAP's rule);
- the best individual and a DEAP ``HallOfFame`` are kept every generation;
- when the best's lineage of noise entries grows past ``max_lineage`` it is folded into every
  worker's base (Such et al. 2017) and every kept individual's genes are rewritten to match;
- gradient refinement (evolm.refine) folds the best in, or gives it its refined fitness;
- the population, hall of fame, best and waiting offspring go into the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from deap import tools

from evolm.checkpoint import individual_from_tree, individual_to_tree
from evolm.fitness_terms import objective_count
from evolm.individuals import clone_individual
from evolm.seeding import numpy_generator
from evolm.strategies.base import Strategy
from evolm.strategies.variation import make_variation


@dataclass
class RebaseUpdate:
    """Fold ``genes`` into every worker's base weights (the population's genes were rewritten to match)."""

    genes: list

    def apply(self, worker) -> None:
        worker.genome.apply(worker.model, self.genes)
        worker.space.commit()


def invalidate(individuals) -> None:
    """Drop each individual's fitness, so the evaluator scores it again."""
    for individual in individuals:
        del individual.fitness.values


class GenerationalStrategy(Strategy):
    """Template: a subclass implements ``breed`` (select and vary); what keeps genes and scores valid lives here."""

    def __init__(self, config):
        super().__init__(config)
        settings = config.strategy
        self.sigma = settings.sigma  # the mutation scale
        self.objectives = objective_count(config)  # nsga2 keeps each fitness term as its own objective
        self.variation = make_variation(config)
        self.hall_of_fame = tools.HallOfFame(settings.hall_of_fame, similar=self.variation.similar)
        self.population: list = []
        self.offspring: list = []  # bred but not yet evaluated beside the population (nsga2's (mu + lambda))
        self.best = None
        self.generation_of_context = None

    def bind(self, worker) -> None:
        self.variation.bind(worker)

    def context_generation(self, generation: int) -> int:
        return generation - generation % self.config.strategy.resample_every

    def ask(self, generation: int) -> list:
        if not self.population:
            rng = numpy_generator(self.run_seed, self.name, "init")
            self.population = self.variation.initial_population(rng, self.population_size, self.sigma, self.objectives)
        context = self.context_generation(generation)
        if context != self.generation_of_context:
            invalidate(self.population)  # a new fitness batch: no score earned on other text survives
            self.generation_of_context = context
        return self.population

    def _tell(self, population, values, generation):
        self.hall_of_fame.update(population)
        self.best = clone_individual(tools.selBest(population, 1)[0])
        metrics = self.breed(population, generation)
        return metrics, self._maybe_rebase()

    def breed(self, population: list, generation: int) -> dict:
        """Make the next ``self.population`` (and ``self.offspring``) from the evaluated ``population``: metrics."""
        raise NotImplementedError

    def _maybe_rebase(self) -> RebaseUpdate | None:
        if not self.variation.needs_rebase(self.best, self.config.strategy.max_lineage):
            return None
        return RebaseUpdate(self.fold_best_into_base())

    def _members(self) -> list:
        """Every individual whose genes are relative to the base (rewritten together at a rebase)."""
        return [*self.population, *self.hall_of_fame.items, self.best, *self.offspring]

    def best_genes(self):
        return self.variation.genes(self.best)

    def fold_best_into_base(self):
        base_genes = list(self.best)
        for individual in self._members():
            individual[:] = self.variation.rebased(individual, base_genes)
        return base_genes

    def after_refinement(self, refined_fitness: float) -> None:
        invalidate(self._members())  # every weight moved with the refined base: scores earned before are stale

    def assign_refined_fitness(self, fitness: tuple) -> None:
        for individual in self.population:
            if list(individual) == list(self.best):
                individual.fitness.values = fitness
                break
        self.best.fitness.values = fitness

    def state_dict(self) -> dict:
        """Everything the next generation depends on: population (with fitness, parent_fitness), hall of fame, best,
        offspring, sigma."""
        return {
            **super().state_dict(),
            "sigma": self.sigma,
            "generation_of_context": self.generation_of_context,
            "population": [individual_to_tree(ind) for ind in self.population],
            "hall_of_fame": [individual_to_tree(ind) for ind in self.hall_of_fame.items],
            "best": individual_to_tree(self.best) if self.best is not None else None,
            "offspring": [individual_to_tree(ind) for ind in self.offspring],
        }

    def load_state_dict(self, state: dict) -> None:
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
