"""Fitness terms: how good a candidate model is (higher is better).

``likelihood`` is the mean log-likelihood per token of one batch of real training text, the same
batch for the whole generation (common random numbers). A NaN or infinite score becomes -inf with
a warning: a diverged individual never crashes a run.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from evolm.data import Batch


@torch.no_grad()
def mean_log_likelihood(model: nn.Module, batch: Batch) -> float:
    logits = model(batch.inputs)
    return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.reshape(-1)).item()


def finite_or_worst(value: float, what: str = "fitness") -> float:
    if math.isfinite(value):
        return value
    warnings.warn(f"{what} was {value}; scored as -inf", RuntimeWarning, stacklevel=2)
    return -math.inf


class LikelihoodFitness:
    """Mean log-likelihood of the generation's training batch, as a 1-tuple."""

    objectives = 1

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[float, ...]:
        return (finite_or_worst(mean_log_likelihood(model, batch)),)
