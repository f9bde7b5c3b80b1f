"""Parameter spaces (which tensors evolve) and genome encodings (how genes become weights).

Four encodings, each with in-place ``apply(model, genes)`` / ``undo(model, genes)`` (no copy of
the model per individual; undo copies the space's base snapshot back, which is exact):

- ``seed``: the compact encoding of Such et al. 2017 ("Deep Neuroevolution", arXiv:1712.06567).
  Genes are a short list of ``(seed, scale[, tensor_mask])`` entries; the perturbation is
  ``sum(scale * noise(seed))``, regenerated tensor by tensor with each tensor's generator seeded
  from (seed, tensor index), so same-shaped tensors never receive identical noise. ``tensor_mask``
  (an int bit mask, -1 = every tensor) lets per-layer crossover pass whole tensors' perturbations.
  A tensor's noise is defined in chunks of :data:`CHUNK_ELEMENTS` (chunk k from (seed, tensor, k),
  chunk 0 from (seed, tensor) alone), so a large model is perturbed and updated through one small
  scratch buffer instead of a model-sized one; small models keep a per-tensor noise cache (an
  antithetic partner reuses its pair's noise) and get the same values either way.
- ``lowrank``: the same entries, but each weight matrix's noise is ``A @ B.T / sqrt(r)`` with
  rank-r factors drawn from the seed (EGGROLL, Sarkar et al. 2025, "Evolution Strategies at the
  Hyperscale", arXiv:2511.16652); vectors (biases, norms) get full-rank noise.
- ``vector``: explicit float32 deltas over a small parameter subset, for DEAP's real-valued operators.
- ``hyper``: named, bounded hyperparameters for population-based training, in :mod:`evolm.hyper`
  (re-exported here).

Separable NES gives a seed or lowrank genome per-value step sizes (:mod:`evolm.step_sizes`): its noise
is then multiplied by them, elementwise (a lowrank matrix's are rank one, so its noise stays low-rank).

Noise is drawn on the device where the tensor lives (a generator on that device): copying host
noise to a GPU costs more than the forward pass. CPU and CUDA generators give different numbers,
so every copy of a model that must agree runs on one device type.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from evolm.errors import UsageError
from evolm.hyper import DEFAULT_HYPERPARAMETERS, HyperGenome, HyperParameter  # noqa: F401  (re-exported)
from evolm.models.base import to_device
from evolm.seeding import mix_seed
from evolm.step_sizes import StepSizes

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
        # The one model-sized copy an in-place genome needs: undo copies it back, exactly. Made on the
        # first in-place perturbation, so a run that never perturbs in place (EGGROLL's batched pass
        # adds the low-rank term inside the forward) never holds it.
        self._base: list[torch.Tensor] | None = None

    def snapshot(self) -> None:
        """Take the base snapshot if there is none yet; call before perturbing the tensors in place."""
        if self._base is None:
            self._base = [t.detach().clone() for t in self.tensors]

    def drop_snapshot(self) -> None:
        """Free the snapshot (no perturbation may be applied); the next in-place perturbation takes a new one."""
        self._base = None

    def restore(self) -> None:
        if self._base is None:
            raise RuntimeError("ParamSpace.restore() without a snapshot: call snapshot() before perturbing in place")
        torch._foreach_copy_(
            self.tensors, self._base
        )  # one call for every tensor: a small model's undo is mostly dispatch

    def commit(self) -> None:
        """Make the current weights the new base (after an update or a rebase)."""
        for tensor, base in zip(self.tensors, self._base or ()):
            base.copy_(tensor)

    def snapshot_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._base or ())

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


# Noise is defined chunk by chunk: 2**18 float32 values (1 MiB) per chunk keeps the scratch buffers
# of a large model at about 1% of a 51M-parameter model's weights, and every tensor of the default
# model (at most 16,384 values) in one chunk, so its noise is what it was before chunks existed.
CHUNK_ELEMENTS = 1 << 18
# Cache each tensor's noise (an antithetic partner then reuses it: half the noise generation) while
# the whole space's noise fits in this many bytes; beyond it, noise is regenerated chunk by chunk.
NOISE_CACHE_BYTES = 64 << 20


def chunk_seed(seed: int, index: int, chunk: int) -> int:
    """Generator seed of chunk ``chunk`` of tensor ``index``; chunk 0 keeps the (seed, tensor) key."""
    key = mix_seed(seed, index)
    return key if chunk == 0 else mix_seed(key, chunk)


def flat_view(tensor: torch.Tensor) -> torch.Tensor | None:
    """The tensor's values as one flat view (no copy), or None when its layout has none."""
    return tensor.view(-1) if tensor.is_contiguous() else None


class NoiseGenome:
    """Genes are ``(seed, scale[, mask])`` entries whose noise is regenerated, never stored.

    Memory held: a float32 cache of every tensor's noise when the space's noise fits in
    ``cache_bytes`` (small models: speed), otherwise two scratch buffers of the longest chunk.
    """

    name = "noise"

    def __init__(self, space: ParamSpace, cache_bytes: int = NOISE_CACHE_BYTES):
        self.space = space
        self.cached = 4 * space.numel <= cache_bytes
        self._chunks = [self._chunk_bounds(t) for t in space.tensors]
        self._longest = max(stop - start for bounds in self._chunks for start, stop in bounds)
        # One generator per device, reseeded per (seed, tensor, chunk): cheaper than a new one each time.
        self._generators: dict[torch.device, torch.Generator] = {}
        self._tensor_generators = [self._generator_on(t.device) for t in space.tensors]
        # Allocated on first use, so a worker that only scores the base model holds none of it.
        self._cache: list[torch.Tensor | None] = [None] * len(space.tensors)
        # The seed each cached tensor holds noise for: an antithetic partner (same seed, negated
        # scale, evaluated next) reuses the noise instead of regenerating it.
        self._cache_seeds: list[int | None] = [None] * len(space.tensors)
        self._scratch: dict[tuple[str, torch.device], torch.Tensor] = {}
        # Separable NES's per-value factors on the noise (evolm.step_sizes), set by its first update; None: all 1.
        self.step_sizes: StepSizes | None = None

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def _chunk_bounds(self, tensor: torch.Tensor) -> list[tuple[int, int]]:
        """``(start, stop)`` of each chunk in the tensor's flat (row-major) order."""
        numel = tensor.numel()
        return [(start, min(start + CHUNK_ELEMENTS, numel)) for start in range(0, max(numel, 1), CHUNK_ELEMENTS)]

    def _fill(self, seed: int, index: int, chunk: int, start: int, stop: int, out: torch.Tensor) -> None:
        """Write chunk ``chunk`` (flat ``start:stop``) of tensor ``index``'s noise into ``out`` (float32,
        contiguous, ``stop - start`` values: flat, or the tensor's shape for a whole one-chunk tensor)."""
        raise NotImplementedError

    def _buffer(self, kind: str, device: torch.device) -> torch.Tensor:
        key = (kind, device)
        if key not in self._scratch:
            self._scratch[key] = torch.empty(self._longest, dtype=torch.float32, device=device)
        return self._scratch[key]

    def _cached(self, seed: int, index: int) -> torch.Tensor:
        """Tensor ``index``'s whole noise for ``seed``, in the cache (regenerated when it holds another seed)."""
        cache = self._cache[index]
        if cache is not None and self._cache_seeds[index] == seed:
            return cache
        self._cache_seeds[index] = None  # a failed generation must not leave a stale tag
        tensor = self.space.tensors[index]
        if cache is None:
            cache = self._cache[index] = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
        chunks = self._chunks[index]
        if len(chunks) == 1:  # the whole tensor: no views on the hot path of small models
            self._fill(seed, index, 0, 0, chunks[0][1], cache)
        else:
            flat = cache.view(-1)
            for chunk, (start, stop) in enumerate(chunks):
                self._fill(seed, index, chunk, start, stop, flat[start:stop])
        self._cache_seeds[index] = seed
        return cache

    def noise(self, seed: int, index: int) -> torch.Tensor:
        """Noise of tensor ``index`` for ``seed`` (float32, on the tensor's device).

        With the cache on, the result is the genome's cache: read it before asking for the same
        tensor's noise under another seed, and never write to it. Without, a new tensor. With step
        sizes, the noise times them (a new tensor).
        """
        if self.cached:
            out = self._cached(seed, index)
        else:
            tensor = self.space.tensors[index]
            out = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
            flat = out.view(-1)
            for chunk, (start, stop) in enumerate(self._chunks[index]):
                self._fill(seed, index, chunk, start, stop, flat[start:stop])
        return out if self.step_sizes is None else out * self.step_sizes.full[index]

    def _chunk_noise(self, seed: int, index: int, chunk: int) -> torch.Tensor:
        """One chunk of noise, in the scratch buffer (valid until the next call)."""
        start, stop = self._chunks[index][chunk]
        out = self._buffer("noise", self.space.tensors[index].device)[: stop - start]
        self._fill(seed, index, chunk, start, stop, out)
        return out

    def apply(self, model: nn.Module, genes) -> None:
        self.space.snapshot()
        cached, sizes = self.cached, self.step_sizes
        for seed, scale, mask in gene_entries(genes):
            if cached and sizes is None and mask == ALL_TENSORS:  # the hot path of small models: one call
                tensors = self.space.tensors
                torch._foreach_add_(tensors, [self._cached(seed, i) for i in range(len(tensors))], alpha=scale)
                continue
            for index, tensor in enumerate(self.space.tensors):
                if mask == ALL_TENSORS or mask_has(mask, index):
                    if cached and sizes is None:  # the hot path of small models: one add per tensor
                        tensor.add_(self._cached(seed, index), alpha=scale)
                    elif cached and sizes is not None:
                        tensor.addcmul_(self._cached(seed, index), sizes.full[index], value=scale)
                    else:
                        self._add_noise(tensor, seed, index, scale)

    def _add_noise(self, tensor: torch.Tensor, seed: int, index: int, scale: float) -> None:
        flat = flat_view(tensor)
        if flat is None:
            tensor.add_(self.noise(seed, index), alpha=scale)
            return
        for chunk, (start, stop) in enumerate(self._chunks[index]):
            if self.step_sizes is None:
                flat[start:stop].add_(self._chunk_noise(seed, index, chunk), alpha=scale)
            else:
                sizes = self.step_sizes.chunk(index, start, stop)
                flat[start:stop].addcmul_(self._chunk_noise(seed, index, chunk), sizes, value=scale)

    def undo(self, model: nn.Module, genes) -> None:
        self.space.restore()

    def combined_noise_chunks(self, seeds: Sequence[int], coefficients: Sequence[float], index: int):
        """``sum(coefficient * noise(seed))`` of tensor ``index`` (noise without step sizes), accumulated
        in float32, as ``(start, stop, values)`` chunks in flat order. ``values`` is scratch the caller
        may overwrite, valid until the next chunk is asked for."""
        for start, stop, total, _ in self.noise_sums_chunks(seeds, coefficients, None, index):
            yield start, stop, total

    def noise_sums_chunks(self, seeds: Sequence[int], first: Sequence[float], second, index: int):
        """``(start, stop, sum(first * eps), sum(second * eps**2))`` chunks of tensor ``index``'s noise
        without step sizes, each seed's noise drawn once; ``second`` None: no second sum (None).
        Separable NES's update takes both; the sums are scratch, as in :meth:`combined_noise_chunks`."""
        squares = second is not None
        terms = [(seed, float(a), float(b)) for seed, a, b in zip(seeds, first, second or [0.0] * len(first))]
        terms = [term for term in terms if term[1] != 0.0 or term[2] != 0.0]
        tensor = self.space.tensors[index]
        if self.cached:
            # Seeds outer: each seed's noise is generated once; per element the sums run in seed
            # order either way, so both branches give the same bits.
            sums = torch.zeros(1 + squares, tensor.numel(), dtype=torch.float32, device=tensor.device)
            for seed, a, b in terms:
                noise = self._cached(seed, index).view(-1)
                sums[0].add_(noise, alpha=a)
                if squares:
                    sums[1].addcmul_(noise, noise, value=b)
            for start, stop in self._chunks[index]:
                yield start, stop, sums[0, start:stop], sums[1, start:stop] if squares else None
            return
        firsts = self._buffer("sum", tensor.device)
        seconds = self._buffer("squares", tensor.device) if squares else None
        for chunk, (start, stop) in enumerate(self._chunks[index]):
            first_sum = firsts[: stop - start].zero_()
            second_sum = None if seconds is None else seconds[: stop - start].zero_()
            for seed, a, b in terms:
                noise = self._chunk_noise(seed, index, chunk)
                first_sum.add_(noise, alpha=a)
                if second_sum is not None:
                    second_sum.addcmul_(noise, noise, value=b)
            yield start, stop, first_sum, second_sum

    def combined_noise(self, seeds: Sequence[int], coefficients: Sequence[float], index: int) -> torch.Tensor:
        """The whole of :meth:`combined_noise_chunks` as one new tensor (tests, small tensors)."""
        tensor = self.space.tensors[index]
        total = torch.empty(tensor.shape, dtype=torch.float32, device=tensor.device)
        flat = total.view(-1)
        for start, stop, values in self.combined_noise_chunks(seeds, coefficients, index):
            flat[start:stop] = values
        return total

    def buffer_bytes(self) -> int:
        """Bytes this genome holds for noise now (cache and scratch)."""
        held = [t for t in self._cache if t is not None] + list(self._scratch.values())
        return sum(t.numel() * t.element_size() for t in held)


class SeedGenome(NoiseGenome):
    """Full-rank Gaussian noise per tensor (Such et al. 2017)."""

    name = "seed"

    def _fill(self, seed, index, chunk, start, stop, out):
        # normal_ is what randn does: the one-chunk case is the per-tensor noise of earlier versions.
        out.normal_(generator=self._tensor_generators[index].manual_seed(chunk_seed(seed, index, chunk)))


class LowRankGenome(NoiseGenome):
    """Rank-r noise ``A @ B.T / sqrt(r)`` per weight matrix (EGGROLL); vectors get full-rank noise.

    A matrix's chunks are blocks of whole rows, ``A[rows] @ B.T``, from the factors of (seed, tensor).
    """

    name = "lowrank"

    def __init__(self, space: ParamSpace, rank: int = 1, cache_bytes: int = NOISE_CACHE_BYTES):
        self.rank = rank
        super().__init__(space, cache_bytes)

    def _chunk_bounds(self, tensor):
        if tensor.dim() != 2:
            return super()._chunk_bounds(tensor)
        rows, cols = tensor.shape
        step = max(1, CHUNK_ELEMENTS // max(cols, 1)) * cols
        return [(start, min(start + step, rows * cols)) for start in range(0, max(rows * cols, 1), step)]

    def factors(self, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with shapes (out, r) and (in, r) for a 2-D tensor, on its device, scaled by the rank-one
        step sizes if any; EGGROLL's batched pass uses them directly."""
        a, b = self._raw_factors(seed, index)
        return (a, b) if self.step_sizes is None else self.step_sizes.scale_factors(index, a, b)

    def _raw_factors(self, seed: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = self.space.tensors[index]
        rows, cols = tensor.shape
        generator = self._tensor_generators[index].manual_seed(mix_seed(seed, index))
        a = torch.randn(rows, self.rank, generator=generator, device=tensor.device)
        b = torch.randn(cols, self.rank, generator=generator, device=tensor.device)
        return a, b

    def _fill(self, seed, index, chunk, start, stop, out):
        tensor = self.space.tensors[index]
        if tensor.dim() != 2:
            out.normal_(generator=self._tensor_generators[index].manual_seed(chunk_seed(seed, index, chunk)))
            return
        cols = tensor.shape[1]
        a, b = self._raw_factors(seed, index)
        noise = torch.matmul(a[start // cols : stop // cols], b.T, out=out.view(-1, cols))
        if self.rank != 1:  # x * 1.0 is x: skip the pass
            noise.mul_(1.0 / math.sqrt(self.rank))


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
        self.space.snapshot()
        if len(devices := {t.device for t in self.space.tensors}) == 1:  # one async copy, not a waiting one per tensor
            delta = to_device(delta, devices.pop())
        offset = 0
        for tensor in self.space.tensors:
            count = tensor.numel()
            tensor.add_(delta[offset : offset + count].view(tensor.shape).to(tensor.device, tensor.dtype))
            offset += count

    def undo(self, model: nn.Module, genes) -> None:
        self.space.restore()


GENOMES = {"seed": SeedGenome, "lowrank": LowRankGenome, "vector": VectorGenome}


def make_genome(config, space: ParamSpace):
    name = config.genome.name
    if name == "lowrank":
        return LowRankGenome(space, config.genome.rank)
    return GENOMES[name](space)
