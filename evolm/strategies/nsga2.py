"""NSGA-II (Deb, Pratap, Agarwal & Meyarivan 2002, "A Fast and Elitist Multiobjective Genetic Algorithm:
NSGA-II", IEEE Transactions on Evolutionary Computation 6(2)), for several fitness objectives.

Each generation the parents and their offspring are evaluated together, and elitist non-dominated
sorting (``tools.selNSGA2``) keeps the best ``population_size`` of them (mu + lambda), which also gives
every survivor its crowding distance. Parents for the next offspring come from NSGA-II's crowded
binary tournament (``tools.selTournamentDCD``: the dominating individual wins, else the less crowded
one), not from ``selTournament``, which would compare objectives lexicographically; they are varied
as in the GA (evolm.strategies.ga: the encoding's crossover and mutation, the 1/5th rule on the
mutation scale). The first Pareto front is logged every generation.
"""

from __future__ import annotations

from deap import tools

from evolm.seeding import scoped_python_random
from evolm.strategies.base import check_population_at_least
from evolm.strategies.ga import GeneticAlgorithm


class NSGA2(GeneticAlgorithm):
    """NSGA-II (Deb et al. 2002): survivors by ``tools.selNSGA2``, offspring by crowded tournament and variation."""

    name = "nsga2"

    @staticmethod
    def validate(config) -> None:
        GeneticAlgorithm.validate(config)
        check_population_at_least(config, 4, "nsga2", "its crowded tournament draws parents in fours")

    def ask(self, generation: int) -> list:
        return super().ask(generation) + self.offspring  # parents and offspring compete for survival

    def breed(self, population: list, generation: int) -> dict:
        metrics = super().breed(population, generation)
        front = tools.sortNondominated(self.population, len(self.population), first_front_only=True)[0]
        metrics["pareto_front"] = sorted([list(ind.fitness.values) for ind in front])
        return metrics

    def _select_and_vary(self, population, generation):
        survivors = tools.selNSGA2(population, self.population_size)  # also sets each survivor's crowding_dist
        with scoped_python_random(self.run_seed, self.name, "select", generation):
            parents = crowded_tournament(survivors, self.population_size)
        self.offspring = self._vary(parents, generation)
        return survivors


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
