"""Separable natural evolution strategy, SNES (Schaul, Glasmachers & Schmidhuber 2011, "High Dimensions
and Heavy Tails for Natural Evolution Strategies", GECCO; Wierstra, Schaul, Glasmachers, Sun, Peters &
Schmidhuber 2014, "Natural Evolution Strategies", JMLR 15, algorithm 6).

The search distribution is a Gaussian with a center ``mu`` (the model's weights) and one step size
per evolving value, ``sigma`` (a vector). Each generation samples ``z_k = mu + sigma * eps_k``, ranks
the samples into utilities ``u_k`` and moves both from the same samples::

    mu    += lr_mu * sigma * sum_k u_k eps_k
    sigma *= exp(lr_sigma / 2 * sum_k u_k (eps_k**2 - 1))

Choices, and where they differ from the papers:

- utilities: NES's (``strategy.utilities = "nes"``: the better half shares weight 1/2,
  log-decreasing, the worse half -1/2; :func:`~evolm.strategies.shaping.nes_utilities`) or centred
  ranks (``"ranks"``, Salimans et al. 2017), scaled to a total absolute weight of 1 like NES's so
  both read the learning rates the same way.
- mirrored sampling (``strategy.mirrored``, on by default: Brockhoff et al. 2010, used by SNES's
  authors too): each seed's ``eps`` is tried with both signs, so a pair adds ``(u+ - u-) eps`` to the
  center and ``(u+ + u-)(eps**2 - 1)`` to the log step sizes. Off: one sample per seed.
- ``lr_sigma`` (``strategy.sigma_learning_rate``) defaults, at 0, to NES's ``(3 + ln d) / (5 sqrt d)``
  with ``d`` every evolving value (the search space's dimension, as in the paper): 0.008 for the
  default model, where 0.05, 0.2 or 0.5 changed the loss after 150 generations by under 0.04 nats.
  ``lr_mu`` is ``strategy.learning_rate`` (default 2, see ``defaults``). ``sigma`` starts at
  ``strategy.sigma`` everywhere. The center takes
  NES's plain step: ``strategy.optimizer`` does not apply, and weight decay is refused.

evolm's properties stay. An individual is a few bytes: ``(seed, +-sigma0)``, its noise regenerated
from the seed and multiplied by the worker's step sizes (:mod:`evolm.step_sizes`, relative to
``sigma0``). Every worker holds those step sizes and updates them from the broadcast update (seeds
and two weights per seed) exactly as it moves the center, so the copies stay identical (the Ray
checksum covers them), and a checkpoint saves them beside the weights. With the **lowrank** genome a
matrix's step sizes are rank one, ``outer(row, column)``: its perturbation ``sigma * (A B^T)`` is
``(row * A)(column * B)^T``, still low-rank, so EGGROLL's batched pass scales the factors and stays
factored; each value's SNES step on ``log sigma`` is projected onto ``log row_i + log column_j``
(least squares). Vectors (biases, norms) keep one step size per value.

The update runs tensor by tensor and chunk by chunk, each seed's noise drawn once for both sums: a
worker holds the weights' undo snapshot, the step sizes (one value per weight) and chunk scratch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from evolm.errors import UsageError
from evolm.individuals import make_individual
from evolm.seeding import numpy_generator
from evolm.step_sizes import StepSizes
from evolm.strategies.base import SEED_RANGE, Strategy, check_positive
from evolm.strategies.optimizers import ChunkedSgd
from evolm.strategies.shaping import centered_ranks, nes_utilities

UTILITIES = ("nes", "ranks")


def nes_sigma_learning_rate(dimension: int) -> float:
    """SNES's default step-size learning rate, ``(3 + ln d) / (5 sqrt d)`` (Wierstra et al. 2014, table 1)."""
    return (3 + math.log(dimension)) / (5 * math.sqrt(dimension))


def utilities(values: np.ndarray, kind: str) -> np.ndarray:
    """Utilities summing to zero: NES's, or centred ranks scaled to a total absolute weight of 1."""
    if kind == "nes":
        return nes_utilities(values)
    ranks = centered_ranks(np.where(np.isfinite(values), values, -np.inf))
    total = np.abs(ranks).sum()
    return ranks / total if total > 0 else ranks


@dataclass
class SnesUpdate:
    """``mu += sigma * sum_k center_k eps_k`` and ``log sigma += sum_k spread_k (eps_k**2 - 1)``, the noise
    ``eps_k`` regenerated from ``seeds``; the weights carry the learning rates (and ``sigma0``)."""

    seeds: list[int]
    center: list[float]
    spread: list[float]

    def apply(self, worker) -> None:
        genome, space = worker.genome, worker.space
        if genome.step_sizes is None:  # the first update: every factor starts at 1 (sigma = sigma0)
            genome.step_sizes = StepSizes(space, factored=genome.name == "lowrank")
        step = ChunkedSgd(space.parameters, lr=1.0)  # theta += ascent: NES's plain step
        for index in range(len(space.tensors)):
            step.step_tensor(index, self._ascent(genome, genome.step_sizes, index))
        space.commit()

    def _ascent(self, genome, sizes: StepSizes, index: int):
        """The center's ascent chunks (old sigma times the weighted noise); after each, the step sizes' step."""
        total = math.fsum(self.spread)
        for start, stop, first, second in genome.noise_sums_chunks(self.seeds, self.center, self.spread, index):
            yield start, stop, first.mul_(sizes.chunk(index, start, stop))
            sizes.step_chunk(index, start, stop, second.sub_(total))
        sizes.finish(index)


class SeparableNES(Strategy):
    name = "snes"
    # lr_mu = 2 (NES uses 1), measured on the default workload, seed 0, population 48, sigma0 0.02: validation
    # loss after 120 generations 3.42 at lr_mu 1, 3.11 at 2, 3.26 at 4; after 150, 3.04 at 2 and 3.07 at 3
    # (sigma0 0.04: 3.07 at 1, 3.26 at 2; sigma0 0.01 at 4: 3.04). Population 24 or 96 (same evaluations) did worse.
    defaults = {"strategy.learning_rate": 2.0}

    def __init__(self, config):
        super().__init__(config)
        settings = config.strategy
        self.sigma = settings.sigma  # sigma0: the scale the genes carry; the step sizes are relative to it
        self.learning_rate = settings.learning_rate
        self.sigma_learning_rate = settings.sigma_learning_rate
        self.utilities = settings.utilities
        self.mirrored = settings.mirrored
        self._seeds: list[int] = []
        self._worker = None  # the driver's: its step sizes are what the metrics report

    @staticmethod
    def validate(config) -> None:
        settings = config.strategy
        if config.genome.name not in ("seed", "lowrank"):
            raise UsageError(
                f"config field genome.name: snes works with the seed or lowrank genome, got {config.genome.name!r}"
            )
        if settings.mirrored and settings.population_size % 2:
            raise UsageError(
                f"config field strategy.population_size must be even for snes with strategy.mirrored "
                f"(pairs +eps, -eps), got {settings.population_size}"
            )
        if settings.population_size < 2:
            raise UsageError(
                f"config field strategy.population_size must be at least 2 for snes, got {settings.population_size}"
            )
        if settings.utilities not in UTILITIES:
            raise UsageError(
                f"config field strategy.utilities must be nes or ranks for snes, got {settings.utilities!r}"
            )
        check_positive(config, "learning_rate")
        if settings.sigma_learning_rate < 0:
            raise UsageError(
                f"config field strategy.sigma_learning_rate must be 0 (NES's default) or positive, "
                f"got {settings.sigma_learning_rate}"
            )
        if settings.weight_decay:
            raise UsageError(
                f"config field strategy.weight_decay: snes takes NES's plain step, without weight decay; "
                f"got {settings.weight_decay}"
            )

    def bind(self, worker) -> None:
        self._worker = worker
        if not self.sigma_learning_rate:
            self.sigma_learning_rate = nes_sigma_learning_rate(worker.space.numel)

    def ask(self, generation: int) -> list:
        rng = numpy_generator(self.run_seed, "snes-noise", generation)
        count = self.population_size // 2 if self.mirrored else self.population_size
        self._seeds = [int(s) for s in rng.integers(0, SEED_RANGE, count)]
        signs = (1.0, -1.0) if self.mirrored else (1.0,)
        return [make_individual([(seed, sign * self.sigma)]) for seed in self._seeds for sign in signs]

    def _tell(self, population, values: np.ndarray, generation: int):
        if not self.sigma_learning_rate:
            raise RuntimeError("snes: bind(worker) first (the NES step-size rate depends on the dimension)")
        weights = utilities(values, self.utilities)
        if self.mirrored:
            plus, minus = weights[0::2], weights[1::2]
            center, spread = plus - minus, plus + minus
        else:
            center = spread = weights
        update = SnesUpdate(
            list(self._seeds),
            [float(c) for c in center * (self.learning_rate * self.sigma)],
            [float(s) for s in spread * (self.sigma_learning_rate / 2)],
        )
        return self._sigma_metrics(), update

    def _sigma_metrics(self) -> dict[str, float]:
        """The step sizes this generation sampled with (the driver's; before its first update: sigma0)."""
        sizes = None if self._worker is None else getattr(self._worker.genome, "step_sizes", None)
        relative = sizes.summary() if sizes is not None else {"mean": 1.0, "min": 1.0, "max": 1.0}
        return {f"sigma_{key}": self.sigma * value for key, value in relative.items()}
