"""DEAP creator classes, made once at import so individuals pickle (they travel to Ray workers).

``Individual`` holds compact genes (a list of ``(seed, scale)`` pairs, or hyperparameter values);
``fitness_class(n)`` gives the maximising fitness with ``n`` objectives. Classes exist for 1..8
objectives so that an unpickling process finds them by name without any setup.
"""

from __future__ import annotations

import warnings

from deap import base, creator

MAX_OBJECTIVES = 8


def _create(name: str, *args, **kwargs) -> None:
    if not hasattr(creator, name):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            creator.create(name, *args, **kwargs)


for _n in range(1, MAX_OBJECTIVES + 1):
    _create(f"EvolmFitness{_n}", base.Fitness, weights=(1.0,) * _n)
    _create(f"EvolmIndividual{_n}", list, fitness=getattr(creator, f"EvolmFitness{_n}"))


def individual_class(objectives: int = 1):
    return getattr(creator, f"EvolmIndividual{objectives}")


def make_individual(genes, objectives: int = 1):
    return individual_class(objectives)(genes)
