"""A GA individual's encoding: its starting population, crossover and mutation, drawn from explicit generators.

Noise genomes (``seed``, ``lowrank``) vary their compact entries, never weights: mutation appends
an entry with a fresh seed (Such et al. 2017, "Deep Neuroevolution", arXiv:1712.06567); crossover
exchanges entries (``pairs``) or whole tensors' perturbations (``layers``: a random tensor mask
splits each parent's entries). Vector genomes use DEAP's own real-valued operators under a scoped,
seeded ``random``. Each class also says how its genes start, compare, report and grow, so the GA
itself never asks which encoding it holds.
"""

from __future__ import annotations

import warnings

import numpy as np
from deap import tools

from evolm.genome import gene_entries
from evolm.individuals import make_individual, make_vector_individual
from evolm.strategies.base import SEED_RANGE

VECTOR_WARN_GENES = 200_000  # DEAP's operators loop in Python, gene by gene


def _entry(seed: int, scale: float, mask: int, full: int):
    mask &= full
    return (seed, scale) if mask == full else (seed, scale, mask)


class NoiseVariation:
    """Genes are ``(seed, scale[, tensor mask])`` entries: perturbations of the workers' base weights."""

    def __init__(self, tensors: int = 0, crossover: str = "layers"):
        self.full = (1 << tensors) - 1
        self.tensors = tensors
        self.crossover_kind = crossover

    def bind(self, worker) -> None:
        """Learn the tensor count for crossover masks."""
        self.full = (1 << len(worker.space.tensors)) - 1
        self.tensors = len(worker.space.tensors)

    def initial_population(self, rng: np.random.Generator, size: int, sigma: float, objectives: int) -> list:
        seeds = rng.integers(0, SEED_RANGE, size)
        # The unperturbed base model is one of the starting individuals.
        return [make_individual([] if i == 0 else [(int(seeds[i]), sigma)], objectives) for i in range(size)]

    @staticmethod
    def similar(first, second) -> bool:
        """Same genes (for DEAP's HallOfFame)."""
        return list(first) == list(second)

    @staticmethod
    def genes(individual) -> list:
        return list(individual)

    @staticmethod
    def needs_rebase(individual, max_lineage: int) -> bool:
        """Every mutation adds an entry: past ``max_lineage`` entries the best is folded into the base."""
        return len(individual) > max_lineage

    def mutate(self, individual, rng: np.random.Generator, sigma: float):
        individual.append((int(rng.integers(0, SEED_RANGE)), float(sigma)))
        return individual

    def crossover(self, first, second, rng: np.random.Generator):
        a, b = list(gene_entries(first)), list(gene_entries(second))
        if self.crossover_kind == "pairs":
            # Uniform crossover of entries: each entry goes to one child or the other.
            child1: list = []
            child2: list = []
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
        self.size = 0

    def bind(self, worker) -> None:
        """Learn the gene count; warn when DEAP's per-gene loops will be slow."""
        self.size = worker.genome.size
        if self.size > VECTOR_WARN_GENES:
            warnings.warn(
                f"vector genome of {self.size:,} genes: DEAP's operators loop per gene and will be slow; "
                "narrow it with --params",
                RuntimeWarning,
                stacklevel=3,  # the line that binds the strategy
            )

    def initial_population(self, rng: np.random.Generator, size: int, sigma: float, objectives: int) -> list:
        genes = rng.normal(0.0, sigma, (size, self.size)).astype(np.float32)
        genes[0] = 0.0  # the unperturbed base model is one of the starting individuals
        return [make_vector_individual(g, objectives) for g in genes]

    similar = staticmethod(np.array_equal)  # DEAP's numpy pitfall: == on arrays is elementwise

    @staticmethod
    def genes(individual) -> np.ndarray:
        return np.asarray(individual, dtype=np.float32)

    @staticmethod
    def needs_rebase(individual, max_lineage: int) -> bool:
        """Vector genes are offsets of a fixed size: nothing grows, nothing to fold."""
        return False

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


def make_variation(config):
    """The encoding's variation; a crossover named for the other encoding falls back to this one's default."""
    settings = config.strategy
    if config.genome.name == "vector":
        crossover = settings.crossover if settings.crossover in ("blend", "sbx") else "blend"
        return VectorVariation(crossover, settings.mutation, settings.indpb, settings.bound)
    return NoiseVariation(0, settings.crossover if settings.crossover in ("layers", "pairs") else "layers")


__all__ = ["NoiseVariation", "VectorVariation", "make_variation"]
