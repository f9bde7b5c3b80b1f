"""Strategies behind one ask/tell interface, found by name."""

from evolm.strategies.base import Strategy, centered_ranks
from evolm.strategies.cmaes import CMAES
from evolm.strategies.es import OpenAIES
from evolm.strategies.ga import NSGA2, GeneticAlgorithm
from evolm.strategies.pbt import PopulationBasedTraining

STRATEGIES: dict[str, type[Strategy]] = {
    "es": OpenAIES,
    "ga": GeneticAlgorithm,
    "nsga2": NSGA2,
    "cmaes": CMAES,
    "pbt": PopulationBasedTraining,
}


def make_strategy(config, worker=None) -> Strategy:
    """The configured strategy, bound to the driver's worker (genome sizes) when one is given."""
    strategy = STRATEGIES[config.strategy.name](config)
    if worker is not None:
        strategy.bind(worker)
    return strategy


__all__ = ["STRATEGIES", "Strategy", "centered_ranks", "make_strategy"]
