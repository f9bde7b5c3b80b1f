"""Strategies behind one ask/tell interface (evolm.strategies.base), found by name.

Each algorithm lives in its own module and cites its paper: es.py (OpenAI-ES), ga.py (genetic
algorithm), nsga2.py (NSGA-II), cmaes.py (CMA-ES), pbt.py (population-based training), snes.py
(separable NES, per-parameter step sizes). Shared
pieces: shaping.py (fitness shaping and ranking), generational.py (a population kept across
generations), variation.py (a GA individual's encoding), optimizers.py (the ES center's optimiser).
A new strategy is one module plus one line in ``STRATEGIES``.
"""

from evolm.strategies.base import Strategy
from evolm.strategies.cmaes import CMAES
from evolm.strategies.es import OpenAIES
from evolm.strategies.ga import GeneticAlgorithm
from evolm.strategies.nsga2 import NSGA2
from evolm.strategies.pbt import PopulationBasedTraining
from evolm.strategies.shaping import centered_ranks
from evolm.strategies.snes import SeparableNES

STRATEGIES: dict[str, type[Strategy]] = {
    "es": OpenAIES,
    "ga": GeneticAlgorithm,
    "nsga2": NSGA2,
    "cmaes": CMAES,
    "pbt": PopulationBasedTraining,
    "snes": SeparableNES,
}


def make_strategy(config, worker=None) -> Strategy:
    """The configured strategy, bound to the driver's worker (genome sizes) when one is given."""
    strategy = STRATEGIES[config.strategy.name](config)
    if worker is not None:
        strategy.bind(worker)
    return strategy


__all__ = ["STRATEGIES", "Strategy", "centered_ranks", "make_strategy"]
