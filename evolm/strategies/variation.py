"""Crossover and mutation for each encoding, drawn from explicit generators.

Noise genomes (``seed``, ``lowrank``) vary their compact entries, never weights: mutation appends
an entry with a fresh seed (Such et al. 2017); crossover exchanges entries (``pairs``) or whole
tensors' perturbations (``layers``: a random tensor mask splits each parent's entries). Vector
genomes use DEAP's own real-valued operators under a scoped, seeded ``random``.
"""

from __future__ import annotations

import numpy as np
from deap import tools

from evolm.genome import ALL_TENSORS, gene_entries

SEED_RANGE = 2**31 - 1


def _entry(seed: int, scale: float, mask: int, full: int):
    mask &= full
    return (seed, scale) if mask == full else (seed, scale, mask)


class NoiseVariation:
    def __init__(self, tensors: int, crossover: str = "layers"):
        self.full = (1 << tensors) - 1
        self.tensors = tensors
        self.crossover_kind = crossover

    def mutate(self, individual, rng: np.random.Generator, sigma: float):
        individual.append((int(rng.integers(0, SEED_RANGE)), float(sigma)))
        return individual

    def crossover(self, first, second, rng: np.random.Generator):
        a, b = list(gene_entries(first)), list(gene_entries(second))
        if self.crossover_kind == "pairs":
            # Uniform crossover of entries: each entry goes to one child or the other.
            child1, child2 = [], []
            for entry in a + b:
                (child1 if rng.random() < 0.5 else child2).append(entry)
        else:
            mask = (
                int(rng.integers(0, 2, self.tensors).dot(1 << np.arange(self.tensors, dtype=object)))
                if self.tensors
                else 0
            )
            inverse = ~mask & self.full
            child1 = [(s, c, m & mask) for s, c, m in a] + [(s, c, m & inverse) for s, c, m in b]
            child2 = [(s, c, m & inverse) for s, c, m in a] + [(s, c, m & mask) for s, c, m in b]
        for child, target in ((child1, first), (child2, second)):
            target[:] = [_entry(s, c, m, self.full) for s, c, m in child if m & self.full]
        return first, second

    def rebased(self, genes, base_genes):
        """Genes that give the same weights once ``base_genes`` are folded into the base.

        Entries shared with the new base cancel exactly; the base's other entries are negated.
        """
        remaining = list(gene_entries(base_genes))
        own = []
        for entry in gene_entries(genes):
            if entry in remaining:
                remaining.remove(entry)
            else:
                own.append(entry)
        own += [(s, -c, m) for s, c, m in remaining]
        return [_entry(s, c, m, self.full) for s, c, m in own]


class VectorVariation:
    """DEAP's operators on numpy genes. They draw from ``random``: callers scope it (seeding.scoped_python_random)."""

    def __init__(self, crossover: str = "blend", mutation: str = "gaussian", indpb: float = 0.1, bound: float = 1.0):
        self.crossover_kind = crossover
        self.mutation_kind = mutation
        self.indpb = indpb
        self.bound = bound

    def mutate(self, individual, rng, sigma: float):
        if self.mutation_kind == "polynomial":
            tools.mutPolynomialBounded(individual, eta=20.0, low=-self.bound, up=self.bound, indpb=self.indpb)
        else:
            tools.mutGaussian(individual, mu=0.0, sigma=sigma, indpb=self.indpb)
            np.clip(individual, -self.bound, self.bound, out=individual)
        return individual

    def crossover(self, first, second, rng):
        if self.crossover_kind == "sbx":
            tools.cxSimulatedBinaryBounded(first, second, eta=15.0, low=-self.bound, up=self.bound)
        else:
            tools.cxBlend(first, second, alpha=0.5)
            np.clip(first, -self.bound, self.bound, out=first)
            np.clip(second, -self.bound, self.bound, out=second)
        return first, second


__all__ = ["ALL_TENSORS", "NoiseVariation", "VectorVariation"]
