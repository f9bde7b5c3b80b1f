"""Parameter spaces (which tensors evolve) and genome encodings (how genes become weights).

Four encodings, each with in-place ``apply(model, genes)`` / ``undo(model, genes)`` (no copy of
the model per individual; undo copies the space's base snapshot back, which is exact):

- ``seed``: the compact encoding of Such et al. 2017 ("Deep Neuroevolution", arXiv:1712.06567).
  Genes are a short list of ``(seed, scale[, tensor_mask])`` entries; the perturbation is
  ``sum(scale * noise(seed))``, regenerated tensor by tensor with each tensor's generator seeded
  from (seed, tensor index), so same-shaped tensors never receive identical noise. ``tensor_mask``
  (an int bit mask, -1 = every tensor) lets per-layer crossover pass whole tensors' perturbations.
- ``lowrank``: the same entries, but each weight matrix's noise is ``A @ B.T / sqrt(r)`` with
  rank-r factors drawn from the seed (EGGROLL, Sarkar et al. 2025, "Evolution Strategies at the
  Hyperscale", arXiv:2511.16652); vectors (biases, norms) get full-rank noise.
- ``vector``: explicit float32 deltas over a small parameter subset, for DEAP's real-valued operators.
- ``hyper``: named, bounded hyperparameters (log-scale learning rate, weight decay, dropout,
  batch size) encoded in [0, 1], for population-based training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from evolm.errors import UsageError
from evolm.seeding import mix_seed

ALL_TENSORS = -1  # tensor mask with every bit set


class ParamSpace:
    """The evolving tensors of a model (names matching ``pattern``) and a snapshot of their base values.

    ``restore()`` copies the snapshot back, so undoing any perturbation is exact and costs one copy.
    """

    def __init__(self, model: nn.Module, pattern: str = ".*"):
        self.model = model
        self.pattern = pattern
        regex = re.compile(pattern)
        self.names: list[str] = []
        self.parameters: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if regex.search(name):
                self.names.append(name)
                self.parameters.append(param)
        if not self.parameters:
            raise UsageError(f"config field genome.params: pattern {pattern!r} matches no parameter of the model")
        # In-place perturbation works on the raw data: no autograd bookkeeping in the hot path.
        self.tensors: list[torch.Tensor] = [p.data for p in self.parameters]
        self.numel = sum(t.numel() for t in self.tensors)
        self._base = [t.detach().clone() for t in self.tensors]

    def restore(self) -> None:
        for tensor, base in zip(self.tensors, self._base):
            tensor.copy_(base)

    def commit(self) -> None:
        """Make the current weights the new base (after an update or a rebase)."""
        for tensor, base in zip(self.tensors, self._base):
            base.copy_(tensor)

    def flat(self) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1).float().cpu() for t in self.tensors])


def gene_entries(genes):
    """Normalise ``(seed, scale)`` and ``(seed, scale, mask)`` entries to 3-tuples."""
    for entry in genes:
        if len(entry) == 2:
            yield int(entry[0]), float(entry[1]), ALL_TENSORS
        else:
            yield int(entry[0]), float(entry[1]), int(entry[2])


def mask_has(mask: int, index: int) -> bool:
    return (mask >> index) & 1 == 1


class NoiseGenome:
    """Genes are ``(seed, scale[, mask])`` entries whose noise is regenerated, never stored."""

    name = "noise"

    def __init__(self, space: ParamSpace):
        self.space = space
        # One reusable CPU buffer per tensor for regenerated noise: no allocation per individual.
        self._buffers = [torch.empty(t.shape, dtype=torch.float32) for t in space.tensors]
        # The seed each buffer holds noise for: an antithetic partner (same seed, negated scale,
        # evaluated next) reuses the noise instead of regenerating it, halving ES's noise cost.
        self._buffer_seeds: list[int | None] = [None] * len(space.tensors)
        self._generator = torch.Generator()  # reseeded per (seed, tensor): cheaper than a new one each time
        # Where each tensor lives, looked up once (a hot path: every tensor of every individual).
        self._devices = [None if t.device.type == "cpu" else t.device for t in space.tensors]

    def _generate(self, generator: torch.Generator, index: int) -> torch.Tensor:
        raise NotImplementedError

    def noise(self, seed: int, index: int) -> torch.Tensor:
        """Noise of tensor ``index`` for ``seed``, made on the CPU generator (identical on any device).

        The result is the genome's reusable buffer: read it before asking for the same tensor's
        noise under another seed, and never write to it.
        """
        if self._buffer_seeds[index] == seed:
            noise = self._buffers[index]
        else:
            self._buffer_seeds[index] = None  # a failed generation must not leave a stale tag
            noise = self._generate(self._generator.manual_seed(mix_seed(seed, index)), index)
            self._buffer_seeds[index] = seed
        device = self._devices[index]
        return noise if device is None else noise.to(device, non_blocking=True)

    def apply(self, model: nn.Module, genes) -> None:
        for seed, scale, mask in gene_entries(genes):
            for index, tensor in enumerate(self.space.tensors):
                if mask == ALL_TENSORS or mask_has(mask, index):
                    tensor.add_(self.noise(seed, index), alpha=scale)

    def undo(self, model: nn.Module, genes) -> None:
        self.space.restore()

    def combined_noise(self, seeds: Sequence[int], coefficients: Sequence[float], index: int) -> torch.Tensor:
        """``sum(coefficient * noise(seed))`` for tensor ``index``, accumulated in float32."""
        tensor = self.space.tensors[index]
        total = torch.zeros(tensor.shape, dtype=torch.float32, device=tensor.device)
        for seed, coefficient in zip(seeds, coefficients):
            if coefficient != 0.0:
                total.add_(self.noise(seed, index), alpha=float(coefficient))
        return total


class SeedGenome(NoiseGenome):
    """Full-rank Gaussian noise per tensor (Such et al. 2017)."""

    name = "seed"

    def _generate(self, generator, index):
        buffer = self._buffers[index]
        return torch.randn(buffer.shape, generator=generator, out=buffer)


class LowRankGenome(NoiseGenome):
    """Rank-r noise ``A @ B.T / sqrt(r)`` per weight matrix (EGGROLL); vectors get full-rank noise."""

    name = "lowrank"

    def __init__(self, space: ParamSpace, rank: int = 1):
        super().__init__(space)
        self.rank = rank

    def factors(self, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with shapes (out, r) and (in, r) for a 2-D tensor; EGGROLL's batched pass uses them directly."""
        rows, cols = self.space.tensors[index].shape
        generator = torch.Generator().manual_seed(mix_seed(seed, index))
        a = torch.randn(rows, self.rank, generator=generator)
        b = torch.randn(cols, self.rank, generator=generator)
        return a, b

    def _generate(self, generator, index):
        buffer = self._buffers[index]
        if buffer.dim() != 2:
            return torch.randn(buffer.shape, generator=generator, out=buffer)
        rows, cols = buffer.shape
        a = torch.randn(rows, self.rank, generator=generator)
        b = torch.randn(cols, self.rank, generator=generator)
        noise = torch.matmul(a, b.T, out=buffer)
        return noise if self.rank == 1 else noise.mul_(1.0 / math.sqrt(self.rank))  # x * 1.0 is x: skip the pass


class VectorGenome:
    """Explicit float32 deltas over the space, flattened in tensor order (numpy genes for DEAP operators)."""

    name = "vector"

    def __init__(self, space: ParamSpace):
        self.space = space
        self.size = space.numel

    def apply(self, model: nn.Module, genes) -> None:
        delta = torch.as_tensor(np.asarray(genes, dtype=np.float32))
        if delta.numel() != self.size:
            raise ValueError(f"vector genome has {delta.numel()} genes, the parameter space {self.size}")
        offset = 0
        for tensor in self.space.tensors:
            count = tensor.numel()
            tensor.add_(delta[offset : offset + count].view(tensor.shape).to(tensor.device, tensor.dtype))
            offset += count

    def undo(self, model: nn.Module, genes) -> None:
        self.space.restore()


@dataclass(frozen=True)
class HyperParameter:
    """A bounded hyperparameter; genes hold it as a number in [0, 1]."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def decode(self, gene: float):
        unit = min(max(float(gene), 0.0), 1.0)
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return int(round(value)) if self.integer else value

    def encode(self, value) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


DEFAULT_HYPERPARAMETERS = (
    HyperParameter("learning_rate", 1e-4, 3e-2, log=True),
    HyperParameter("weight_decay", 0.0, 0.1),
    HyperParameter("dropout", 0.0, 0.3),
    HyperParameter("batch_size", 8, 64, integer=True),
)


class HyperGenome:
    """Training hyperparameters for population-based training; ``apply`` sets dropout in place."""

    name = "hyper"

    def __init__(self, parameters: Sequence[HyperParameter] = DEFAULT_HYPERPARAMETERS):
        self.parameters = tuple(parameters)
        self.size = len(self.parameters)

    def decode(self, genes) -> dict:
        return {p.name: p.decode(g) for p, g in zip(self.parameters, genes)}

    def encode(self, values: dict) -> list[float]:
        return [p.encode(values[p.name]) for p in self.parameters]

    def apply(self, model: nn.Module, genes) -> None:
        values = self.decode(genes)
        self._saved = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)}
        if "dropout" in values:
            for module in self._saved:
                module.p = values["dropout"]

    def undo(self, model: nn.Module, genes) -> None:
        for module, p in getattr(self, "_saved", {}).items():
            module.p = p


GENOMES = {"seed": SeedGenome, "lowrank": LowRankGenome, "vector": VectorGenome}


def make_genome(config, space: ParamSpace):
    name = config.genome.name
    if name == "lowrank":
        return LowRankGenome(space, config.genome.rank)
    return GENOMES[name](space)
