"""Strategies behind one ask/tell interface, found by name."""

from evolm.strategies.base import Strategy, centered_ranks
from evolm.strategies.es import OpenAIES

STRATEGIES: dict[str, type[Strategy]] = {"es": OpenAIES}


def make_strategy(config) -> Strategy:
    return STRATEGIES[config.strategy.name](config)


__all__ = ["STRATEGIES", "Strategy", "centered_ranks", "make_strategy"]
