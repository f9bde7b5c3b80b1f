"""Whole-population text generation for low-rank genomes: every individual writes its continuations in
one batched, cached pass (EGGROLL, Sarkar et al. 2025, arXiv:2511.16652, applied to sampling).

Reward and self-feedback fitness spend their time writing, not scoring. Written one individual at a
time, a population of P individuals on B prompts runs P generations of batch B, each step a handful
of tiny matrix products dominated by per-call overhead; here the model's own ``prefill`` and ``step``
run once on the prompts stacked P times (P*B rows, individual by individual) inside
:func:`evolm.population.population_forwards`, so each step is one call per layer for everyone, with
each individual's rank-r correction (its own key/value cache rows, or its own LSTM state rows, come
for free: they are just rows of the stacked batch).

Sampling is exactly what each individual would draw alone. Every individual samples from a generator
seeded the same way (common random numbers: :class:`evolm.fitness.FitnessContext`'s sampling seed),
and the exponential race of :func:`evolm.models.base.sample_next` draws its noise by shape only, so
one ``(B, vocab)`` draw per step, shared by the P individuals, is the noise each would have drawn.
An individual whose probabilities turn NaN (a diverged perturbation) is flagged alone, on the device,
and read once at the end; the others' rows are unaffected. tests/test_population_writing.py checks
the GPT, the LSTM and a Hugging Face GPT-2 against writing one individual at a time.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from evolm.fitness import Writing
from evolm.fitness_terms import GENERATION_TERMS, parse_terms
from evolm.genome import LowRankGenome
from evolm.models.base import _race_noise, device_generator
from evolm.models.gpt import GPT
from evolm.population import PopulationDelta, population_forwards, supports_population
from evolm.population_gpt import gpt_population_pass
from evolm.tasks.fitness import uses_task

# What a writing pass may keep of every individual's whole tensors (biases, norms, an LSTM's W_hh, a
# module run under vmap), built once and reused by every step; beyond it they are rebuilt per call.
KEEP_BYTES = 64 * 2**20


class WritingDelta(PopulationDelta):
    """The population's perturbations for a whole writing pass: each individual's whole vectors and the
    whole matrices a module needs (an LSTM's ``W_hh``, a module under vmap) are built once, on first
    use, and reused by every step, up to :data:`KEEP_BYTES`.

    Linear layers keep EGGROLL's factored form (a shared matmul plus each individual's rank-r
    correction): folding each individual's ``W + A_i B_i^T`` once per pass reads P weight copies per
    step. Measured (2 CPU cores, 16 individuals x 8 prompts x 32 tokens, tokens/s, plain batched
    generation of 128 rows for reference): the 4x-wide GPT, one thread, factored 22,828 against folded
    14,348 (plain 27,479); the default GPT about even (48,330 against 46,216, plain 53,760)."""

    def __init__(self, genome: LowRankGenome, genes_list: list, rows: int):
        super().__init__(genome, genes_list, rows)
        self._whole: dict[int, torch.Tensor] = {}
        self._kept = 0

    def full(self, param: torch.Tensor) -> torch.Tensor:
        whole = self._whole.get(id(param))
        if whole is None:
            whole = super().full(param)
            size = whole.numel() * whole.element_size()
            if self._kept + size <= KEEP_BYTES:
                self._whole[id(param)] = whole
                self._kept += size
        return whole


def _sample(
    logits: torch.Tensor, temperature: float, population: int, generator, invalid: torch.Tensor
) -> torch.Tensor:
    """One token per stacked row (P*B, 1): each individual's rows sampled as :func:`sample_next` would
    sample them alone; ``invalid`` (P,) is set for individuals whose logits (greedy) or probabilities
    (sampling) are not finite."""
    rows = logits.shape[0] // population
    if temperature <= 0:
        invalid.logical_or_(~torch.isfinite(logits.reshape(population, -1)).all(dim=1))
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1).reshape(population, rows, -1)
    invalid.logical_or_(probs.isnan().flatten(1).any(dim=1))
    noise = _race_noise(probs[0], generator)  # the (B, vocab) draw each individual would make alone
    return (probs / noise).argmax(dim=-1).reshape(-1, 1)


class _GPTWriter:
    """The GPT's prefill and step on (P, B*t, width) through :func:`evolm.population_gpt.gpt_population_pass`
    (no module hooks: a step is small, and the hooks' Python cost per module is a large share of it). The
    same cache, windows and rebuilds as :class:`evolm.models.gpt.GPT`."""

    def __init__(self, model: GPT, delta: PopulationDelta, longest: int):
        self.model, self.delta = model, delta
        self.capacity = min(longest, model.config.context)  # positions the cache will hold at most

    def _run(self, tokens: torch.Tensor, start: int, caches=None):
        """Logits (P*B, t, vocab) of the stacked ``tokens`` (P*B, t), and every block's keys and values."""
        population, time = self.delta.size, tokens.shape[1]
        rows = tokens.shape[0] // population
        logits, caches = gpt_population_pass(
            self.model, self.delta, tokens.reshape(population, -1), rows, start, caches, True, self.capacity
        )
        return logits.reshape(population * rows, time, -1), caches

    def prefill(self, prompt: torch.Tensor):
        window = prompt[:, -self.model.config.context :]
        logits, caches = self._run(window, 0)
        return logits[:, -1], (caches, window)

    def step(self, tokens: torch.Tensor, state):
        caches, window = state
        window = torch.cat([window, tokens], dim=1)
        context = self.model.config.context
        if window.shape[1] > context:
            return self.prefill(window[:, -(context // 2 + 1) :])
        logits, caches = self._run(tokens, window.shape[1] - 1, caches)
        return logits[:, -1], (caches, window)


@torch.no_grad()
def population_write(model: nn.Module, genome: LowRankGenome, genes_list: list, writing: Writing) -> list:
    """Each individual's continuations of ``writing.prompts`` (B, T): a (B, new_tokens) tensor on the
    model's device, or None for an individual that diverged while it wrote, as ``model.generate(prompts,
    new_tokens, temperature, torch.Generator().manual_seed(seed))`` gives with its genes applied (it
    raises on NaN probabilities; with greedy decoding, non-finite logits count as diverged, as
    :meth:`evolm.tasks.runtime.TaskRuntime.write` checks)."""
    prompts, new_tokens = writing.prompts, writing.new_tokens
    population = len(genes_list)
    if new_tokens <= 0:
        return [prompts.new_empty((prompts.shape[0], 0)) for _ in genes_list]
    rows = prompts.shape[0]
    delta = WritingDelta(genome, genes_list, rows=rows)
    stacked = prompts.repeat(population, 1)  # individual i's rows: i*B .. (i+1)*B - 1
    # The GPT's own writer (exact type: a subclass may change its forward); any other model runs its own
    # prefill and step with every evolving module replaced (evolm.population.population_forwards).
    longest = prompts.shape[1] + new_tokens
    writer: Any = _GPTWriter(model, delta, longest) if type(model) is GPT else model
    with contextlib.nullcontext() if type(model) is GPT else population_forwards(model, delta):
        logits, state = writer.prefill(stacked)
        generator = device_generator(torch.Generator().manual_seed(writing.seed), logits.device)
        written = torch.empty((stacked.shape[0], new_tokens), dtype=torch.long, device=logits.device)
        invalid = torch.zeros(population, dtype=torch.bool, device=logits.device)
        for index in range(new_tokens):
            token = _sample(logits, writing.temperature, population, generator, invalid)
            written[:, index : index + 1] = token
            if index + 1 < new_tokens:
                logits, state = writer.step(token, state)
    diverged = invalid.tolist()  # the one read from the device
    per_individual = written.view(population, rows, new_tokens)
    return [None if bad else per_individual[i] for i, bad in enumerate(diverged)]


def population_chunk(batch_individuals: int, device: torch.device, writes: bool = False) -> int:
    """Low-rank individuals per batched pass: as configured, or by device when 0. On 2 CPU cores a
    batch of individuals scoring fixed text ran slower per token than one at a time in place (a bigger
    working set falls out of cache, benchmarks/throughput.py); GPUs gain from the batch (EGGROLL), and
    so does writing on any device (a step of one individual is too small to keep a core busy)."""
    if batch_individuals:
        return batch_individuals
    return 16 if device.type == "cuda" or writes else 1


def configure_batched_pass(worker, config) -> None:
    """Turn EGGROLL's batched pass on for a worker of a built-in model with a low-rank genome: a chunk of
    genomes scored at once when fitness is likelihood alone, or written for at once when the fitness
    writes (a task, self-feedback, diversity, novelty, margin)."""
    terms = {name: weight for name, weight in parse_terms(config.fitness.terms) if weight}
    likelihood_only = set(terms) == {"likelihood"} and not uses_task(config)
    writes = uses_task(config) or bool(set(terms) & set(GENERATION_TERMS))
    if not (isinstance(worker.genome, LowRankGenome) and supports_population(worker.model)):
        return
    if likelihood_only or writes:
        chunk = population_chunk(config.genome.batch_individuals, worker.device, writes and not likelihood_only)
        worker.population_chunk = chunk if chunk > 1 else 0
        # nsga2 keeps raw term values as objectives; the weighted sum scales them.
        worker.likelihood_weight = 1.0 if config.strategy.name == "nsga2" else terms.get("likelihood", 1.0)
