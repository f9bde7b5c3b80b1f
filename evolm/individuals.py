"""DEAP creator classes, made once at import so individuals pickle (they travel to Ray workers).

``Individual`` holds compact genes (a list of ``(seed, scale)`` pairs, or hyperparameter values);
``VectorIndividual`` is a numpy array of explicit genes; both carry a maximising fitness. Classes exist for 1..8
objectives so that an unpickling process finds them by name without any setup.
"""

from __future__ import annotations

import warnings

import numpy as np
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
    _create(f"EvolmVector{_n}", np.ndarray, fitness=getattr(creator, f"EvolmFitness{_n}"))


def individual_class(objectives: int = 1):
    return getattr(creator, f"EvolmIndividual{objectives}")


def vector_class(objectives: int = 1):
    return getattr(creator, f"EvolmVector{objectives}")


def make_vector_individual(values, objectives: int = 1):
    """A numpy individual holding its own copy of ``values`` (float32). DEAP's numpy pitfall: never a view."""
    # .view skips DEAP's __new__ (which goes through a Python list) and so its __init__: set the fitness here.
    individual = np.array(values, dtype=np.float32).view(vector_class(objectives))
    individual.fitness = getattr(creator, f"EvolmFitness{objectives}")()
    return individual


def clone_individual(individual):
    """A copy with its own genes (never a view) and the same fitness, cheaper than ``deepcopy``."""
    objectives = len(individual.fitness.weights)
    if isinstance(individual, np.ndarray):
        child = make_vector_individual(individual, objectives)
    else:
        child = make_individual(list(individual), objectives)
    if individual.fitness.valid:
        child.fitness.values = individual.fitness.values
    return child


def make_individual(genes, objectives: int = 1):
    return individual_class(objectives)(genes)


def genes_of(individual):
    """The bare genes of an individual (a list of entries, or a float32 array) for a worker: no DEAP class."""
    if isinstance(individual, np.ndarray):
        return np.asarray(individual, dtype=np.float32).view(np.ndarray).copy()
    return list(individual)
