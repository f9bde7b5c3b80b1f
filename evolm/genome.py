"""Parameter spaces (which tensors evolve) and genome encodings (how genes become weights).

The ``seed`` encoding is the compact one of Such et al. 2017 ("Deep Neuroevolution",
arXiv:1712.06567): a genome is a short list of ``(seed, scale)`` pairs and its perturbation is
regenerated tensor by tensor, each tensor's generator seeded from (seed, tensor index), so
same-shaped tensors never receive identical noise. Genes are a few bytes whatever the model size.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from evolm.errors import UsageError
from evolm.seeding import mix_seed


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
        # In-place perturbation works on the raw data: no autograd bookkeeping in the hot path.
        self.tensors: list[torch.Tensor] = [p.data for p in self.parameters]
        if not self.tensors:
            raise UsageError(f"config field genome.params: pattern {pattern!r} matches no parameter of the model")
        self.numel = sum(t.numel() for t in self.tensors)
        self._base = [t.detach().clone() for t in self.tensors]
        # One reusable CPU buffer per tensor for regenerated noise: no allocation per individual.
        self._noise_buffers = [torch.empty(t.shape, dtype=torch.float32) for t in self.tensors]

    def restore(self) -> None:
        for tensor, base in zip(self.tensors, self._base):
            tensor.copy_(base)

    def commit(self) -> None:
        """Make the current weights the new base (after an update or a rebase)."""
        for tensor, base in zip(self.tensors, self._base):
            base.copy_(tensor)

    def noise(self, seed: int, index: int) -> torch.Tensor:
        """Standard Gaussian noise for tensor ``index`` of the genome with ``seed``, regenerated on the CPU."""
        generator = torch.Generator().manual_seed(mix_seed(seed, index))
        buffer = self._noise_buffers[index]
        torch.randn(buffer.shape, generator=generator, out=buffer)
        device = self.tensors[index].device
        return buffer if device.type == "cpu" else buffer.to(device, non_blocking=True)

    def combined_noise(self, seeds: Sequence[int], coefficients: Sequence[float], index: int) -> torch.Tensor:
        """Sum of ``coefficient * noise(seed)`` over the pairs, in float32, for tensor ``index``."""
        total = torch.zeros(self.tensors[index].shape, dtype=torch.float32, device=self.tensors[index].device)
        for seed, coefficient in zip(seeds, coefficients):
            if coefficient != 0.0:
                total.add_(self.noise(seed, index), alpha=float(coefficient))
        return total


class SeedGenome:
    """Genes: a list of ``(seed, scale)`` pairs; the perturbation is ``sum(scale * noise(seed))``."""

    name = "seed"

    def __init__(self, space: ParamSpace):
        self.space = space

    def apply(self, model: nn.Module, genes) -> None:
        for index, tensor in enumerate(self.space.tensors):
            for seed, scale in genes:
                tensor.add_(self.space.noise(seed, index), alpha=float(scale))

    def undo(self, model: nn.Module, genes) -> None:
        self.space.restore()


GENOMES = {"seed": SeedGenome}


def make_genome(name: str, space: ParamSpace):
    return GENOMES[name](space)
