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
from evolm.errors import UsageError
from evolm.seeding import torch_generator


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
    """Mean log-likelihood of the generation's training batch, as a 1-tuple.

    The fitness interface every worker uses: ``context(generation)`` builds what the generation
    shares (text batch, prompts, sampling seeds), ``__call__(model, context)`` scores one model,
    ``tokens(context)`` counts the tokens one call puts through forward passes.
    """

    objectives = 1

    def __init__(self, corpus, batch_size: int, run_seed: int, device):
        self.corpus = corpus
        self.batch_size = batch_size
        self.run_seed = run_seed
        self.device = device

    def context(self, generation: int) -> Batch:
        # The generation's shared training batch (common random numbers), from a derived seed.
        generator = torch_generator(self.run_seed, "fitness-batch", generation)
        return self.corpus.sample_batch(self.batch_size, generator).to(self.device)

    def tokens(self, context: Batch) -> int:
        return context.num_tokens

    def __call__(self, model: nn.Module, context: Batch) -> tuple[float, ...]:
        return (finite_or_worst(mean_log_likelihood(model, context)),)

    def report(self, model: nn.Module, generation: int) -> dict:
        """Figures about the current (center or best) model logged every generation; generation -1 is the start."""
        return {}


def validate_fitness_config(config) -> None:
    """Raise UsageError for a fitness section this build cannot use."""
    if config.fitness.terms.replace(" ", "") != "likelihood=1":
        raise UsageError(f"config field fitness.terms: unsupported terms {config.fitness.terms!r} (supported: likelihood=1)")


def build_fitness(config, corpus, device, model: nn.Module):
    """The fitness of a run config. ``model`` is the freshly built base model (a reference scorer copies it)."""
    return LikelihoodFitness(corpus, config.data.batch_size, config.seed, device)
