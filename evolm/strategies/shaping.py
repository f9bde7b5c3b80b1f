"""Fitness shaping and ranking: small pure functions of a generation's fitness values.

The strategies rank rather than read raw fitness, so an update is invariant to any monotone change
of the fitness (Salimans et al. 2017; Hansen 2016, "The CMA Evolution Strategy: A Tutorial",
arXiv:1604.00772). A diverged individual (fitness -inf, or any non-finite value) ranks last.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def centered_ranks(values: ArrayLike) -> np.ndarray:
    """Ranks mapped to [-0.5, 0.5] (Salimans et al. 2017): invariant to any monotone change of fitness.

    -inf (a diverged individual) simply ranks last; ties get the mean of their ranks.
    """
    fitness = np.asarray(values, dtype=np.float64)
    n = len(fitness)
    if n < 2:
        return np.zeros(n)
    order = np.argsort(fitness, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    # Average the ranks of tied values so identical fitness gets identical weight.
    unique, inverse = np.unique(fitness, return_inverse=True)
    if len(unique) < n:
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks / (n - 1) - 0.5


def best_first(values: ArrayLike) -> np.ndarray:
    """Indices of ``values`` from the best to the worst; non-finite values rank last.

    Ties (the diverged among themselves, too) keep population order, so the ranking repeats exactly.
    """
    fitness = np.asarray(values, dtype=np.float64)
    key = np.where(np.isfinite(fitness), fitness, -np.inf)
    return np.argsort(-key, kind="stable")


def nes_utilities(values: ArrayLike) -> np.ndarray:
    """NES's fitness-shaping utilities (Wierstra et al. 2014, JMLR 15, section 3.1), summing to zero.

    The k-th best of n gets ``max(0, ln(n/2 + 1) - ln k) / sum_j max(0, ln(n/2 + 1) - ln j) - 1/n``:
    the better half shares a total weight of 1/2, log-decreasing, and the worse half -1/2 evenly.
    Non-finite values rank last; ties (the diverged among them) share the mean of their utilities.
    """
    fitness = np.asarray(values, dtype=np.float64)
    n = len(fitness)
    if n < 2:
        return np.zeros(n)
    key = np.where(np.isfinite(fitness), fitness, -np.inf)
    raw = np.maximum(0.0, np.log(n / 2 + 1) - np.log(np.arange(1, n + 1)))
    utilities = np.empty(n, dtype=np.float64)
    utilities[best_first(key)] = raw / raw.sum() - 1.0 / n
    unique, inverse = np.unique(key, return_inverse=True)
    if len(unique) < n:
        utilities = (np.bincount(inverse, weights=utilities) / np.bincount(inverse))[inverse]
    return utilities
