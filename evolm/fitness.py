"""Fitness terms: how good a candidate model is (higher is better), weighted or as separate objectives.

``fitness.terms`` names the terms and their weights, e.g. ``"likelihood=1,self=0.5,diversity=0.2"``:

- ``likelihood``: mean log-likelihood per token of one batch of real training text.
- ``self``: the candidate continues prompts drawn from the training text; a scorer (the candidate
  itself, or the frozen model the run started from) gives the mean log-likelihood per token of
  those continuations (self-feedback, as in the seed document's environment).
- ``diversity``: :func:`evolm.textstats.diversity_score` of the candidate's continuations (distinct-1..4
  and 1 - repetition rate), a share in [0, 1] counted in nats: times ln(vocabulary size), the gap
  between a uniform and a certain model, so that equal weights give the terms equal ranges.
- ``margin``: the seed document's perceptual loss max(0, m + s_n - s_p) as fitness, negated: s_p is
  the scorer's mean log-likelihood of the real batch, s_n its score of the candidate's continuations.
- ``novelty`` (novelty search, Lehman & Stanley 2011): how far the candidate's continuations are from
  the rest of the population's this generation (:func:`evolm.textstats.novelty_scores`), in [0, 1] and
  counted in nats like diversity. Workers send each n-gram profile with the other terms; the driver
  scores novelty once the whole population is in (:func:`with_novelty`); a model scored alone has 0.

What a generation shares (the batch, the prompts, the sampling seed) is built once from derived
seeds, so every individual meets the same text (common random numbers). The terms combine into a
weighted sum (one objective) or, for nsga2, into one objective per term in the order written; a
term of weight 0 is off. A NaN or infinite score becomes -inf with a warning: a diverged
individual never crashes a run.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evolm.data import VOCAB_SIZE, Batch
from evolm.errors import UsageError
from evolm.fitness_terms import GENERATION_TERMS, objective_count, parse_terms
from evolm.models.base import NonFiniteLogits, model_context
from evolm.seeding import derive_seed, torch_generator
from evolm.textstats import distinct_n, diversity_score, ngram_profile, novelty_scores, repetition_rate

# The per-generation report: fixed validation prompts and seed, cheap next to a generation.
REPORT_PROMPTS = 8
REPORT_NEW_TOKENS = 32


@torch.no_grad()
def mean_log_likelihood(model: nn.Module, batch: Batch) -> float:
    """The ``likelihood`` term: mean log-likelihood per token of ``batch`` (minus the cross-entropy loss)."""
    logits = model(batch.inputs)
    return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.reshape(-1)).item()


def finite_or_worst(value: float, what: str = "fitness") -> float:
    if math.isfinite(value):
        return value
    warnings.warn(f"{what} was {value}; scored as -inf", RuntimeWarning, stacklevel=2)
    return -math.inf


@dataclass
class Scored:
    """A fitness whose novelty part waits for the whole population: the objectives with novelty 0,
    where novelty enters (objective index and weight, in nats per unit of distance), and the profile."""

    values: tuple[float, ...]
    novelty_index: int
    novelty_weight: float
    profile: np.ndarray | None  # None for a diverged individual: it keeps -inf and is nobody's neighbour


def with_novelty(results: list) -> tuple[list, list[float] | None]:
    """Fitness tuples for a population's results, and each one's novelty (None without the term).

    Plain tuples pass through; :class:`Scored` ones get their novelty against the rest of the list
    (the individuals scored together this generation)."""
    if not results or not isinstance(results[0], Scored):
        return results, None
    novelty = novelty_scores([r.profile for r in results])
    finished = []
    for result, value in zip(results, novelty):
        values = list(result.values)
        values[result.novelty_index] += result.novelty_weight * value
        finished.append(tuple(values))
    return finished, novelty


@torch.no_grad()
def continuation_log_likelihood(
    scorer_model: nn.Module, prompts: torch.Tensor, continuations: torch.Tensor, context: int | None = None
) -> float:
    """Mean log-likelihood per token the scorer gives ``continuations`` (batch, new) after ``prompts`` (batch, p).

    One forward over prompt + continuation; with a ``context`` the sequence keeps its last ``context``
    tokens, and a continuation token that lands first in that window (no left context) is not scored.
    """
    sequence = torch.cat([prompts, continuations.to(prompts.device)], dim=1)
    if context is not None and sequence.shape[1] > context:
        sequence = sequence[:, -context:]
    new = min(continuations.shape[1], sequence.shape[1] - 1)  # scorable continuation tokens
    if new <= 0:
        return float("nan")
    logits = scorer_model(sequence[:, :-1])[:, -new:]
    targets = sequence[:, -new:]
    return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)).item()


# --- the fitness object -------------------------------------------------------------------------


@dataclass(frozen=True)
class Writing:
    """What every individual writes in a generation: the same prompts (B, T), length, temperature and
    sampling seed, so a worker can write for a whole low-rank population in one batched pass
    (:func:`evolm.population_writing.population_write`) and hand each its :class:`Written` tokens."""

    prompts: torch.Tensor
    new_tokens: int
    temperature: float
    seed: int


@dataclass(frozen=True)
class Written:
    """One individual's continuations, written for it beforehand (None: it diverged while writing)."""

    tokens: torch.Tensor | None


@dataclass
class FitnessContext:
    """What one generation shares: the same text, prompts and sampling seed for every individual."""

    generation: int
    # Built only when an active term needs it (None otherwise): typed Any, the terms check which they use.
    batch: Any  # real training text, a Batch (likelihood, margin)
    prompts: Any  # (prompts, prompt_tokens) tokens from the training text (self, diversity, margin)
    sampling_seed: int  # every individual samples its continuations from a generator with this seed
    reference_real_score: float | None = None  # s_p of the frozen reference scorer, the same for everyone


def generation_forward_tokens(prompt_tokens: int, new_tokens: int, context: int | None) -> int:
    """Tokens one row of cached generation encodes: the prefill, one per step, and GPT cache rebuilds."""
    window = prompt_tokens if context is None else min(prompt_tokens, context)
    total = window
    for _ in range(new_tokens - 1):
        window += 1
        if context is not None and window > context:
            window = context // 2 + 1  # the GPT re-encodes its last half-context (evolm.models.gpt)
            total += window
        else:
            total += 1
    return total


class Fitness:
    """The configured terms, scored on one model at a time; the interface every worker uses.

    ``context(generation)`` builds what the generation shares, ``__call__(model, context)`` scores one
    model (a tuple, higher is better), ``tokens(context)`` counts the tokens one call puts through
    forward passes, ``report(model, generation)`` gives figures logged every generation.
    """

    def __init__(self, config, corpus, device, model: nn.Module):
        self.terms = parse_terms(config.fitness.terms)
        self.multi_objective = config.strategy.name == "nsga2"
        self.active = [(name, weight) for name, weight in self.terms if weight > 0]
        self.objectives = objective_count(config)
        self.names = {name for name, _ in self.active}
        self.corpus = corpus
        self.device = device
        self.run_seed = config.seed
        self.batch_size = config.data.batch_size
        settings = config.fitness
        self.num_prompts = settings.prompts
        self.prompt_tokens = settings.prompt_tokens
        self.generate_tokens = settings.generate_tokens
        self.temperature = settings.temperature
        self.margin = settings.margin
        self.context_length = model_context(model)
        # Likelihoods are nats per token, in [-ln V, 0] for any sane model; a share in [0, 1] would weigh
        # about 1/ln V as much at equal weight (measured: too weak to stop self-feedback collapse).
        self.diversity_scale = math.log(getattr(getattr(model, "config", None), "vocab_size", VOCAB_SIZE))
        self.needs_generation = bool(self.names & set(GENERATION_TERMS))
        self.needs_batch = "likelihood" in self.names or "margin" in self.names
        # The frozen scorer is the model as built, before any update: a deep copy made now.
        self.reference = None
        if settings.scorer == "reference" and self.names & {"self", "margin"}:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        for name, part in (("training", corpus.train), ("validation", corpus.val)):
            if len(part) < self.prompt_tokens:
                raise UsageError(
                    f"config field fitness.prompt_tokens ({self.prompt_tokens}) is longer than the corpus "
                    f"{name} part ({len(part)} tokens)"
                )
        self._report_prompts: torch.Tensor | None = None

    # What the generation shares --------------------------------------------------------------

    def _sample_prompts(self, generation: int) -> torch.Tensor:
        generator = torch_generator(self.run_seed, "fitness-prompts", generation)
        train = self.corpus.train
        starts = torch.randint(0, len(train) - self.prompt_tokens + 1, (self.num_prompts,), generator=generator)
        return train[starts.unsqueeze(1) + torch.arange(self.prompt_tokens)].to(self.device)

    def context(self, generation: int) -> FitnessContext:
        batch: Batch | None = None
        prompts = None
        if self.needs_batch:
            # The same derived seed as the likelihood-only fitness always used: its runs keep their batches.
            generator = torch_generator(self.run_seed, "fitness-batch", generation)
            batch = self.corpus.sample_batch(self.batch_size, generator).to(self.device)
        if self.needs_generation:
            prompts = self._sample_prompts(generation)
        context = FitnessContext(generation, batch, prompts, derive_seed(self.run_seed, "fitness-sampling", generation))
        if "margin" in self.names and self.reference is not None:
            context.reference_real_score = mean_log_likelihood(self.reference, context.batch)
        return context

    def tokens(self, context: FitnessContext) -> int:
        total = 0
        if "likelihood" in self.names or ("margin" in self.names and self.reference is None):
            total += context.batch.num_tokens
        if self.needs_generation:
            rows = context.prompts.shape[0]
            length = context.prompts.shape[1]
            total += rows * generation_forward_tokens(length, self.generate_tokens, self.context_length)
            if self.names & {"self", "margin"}:
                scored = length + self.generate_tokens
                if self.context_length is not None:
                    scored = min(scored, self.context_length)
                total += rows * (scored - 1)
        return total

    # Scoring -----------------------------------------------------------------------------------

    def _generate(self, model, prompts: torch.Tensor, seed: int, new_tokens: int) -> torch.Tensor | None:
        """The model's continuations, or None when it has diverged (non-finite logits break sampling)."""
        generator = torch.Generator().manual_seed(seed)
        try:
            return model.generate(prompts, new_tokens, self.temperature, generator)
        except NonFiniteLogits:  # NaN logits at some step: diverged (any other error surfaces)
            return None

    @torch.no_grad()
    def scores(self, model: nn.Module, context: FitnessContext) -> dict[str, float]:
        """Every active term's raw value (higher is better), sharing one generation and one batch forward."""
        return self._scores(model, context)[0]

    def _scores(
        self, model: nn.Module, context: FitnessContext, written: Written | None = None
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """The raw values (novelty 0: it needs the population) and the continuations, None when not generated
        or diverged; ``written``: the continuations written beforehand (batched), else ``model`` writes them."""
        values: dict[str, float] = {}
        continuations = None
        if "likelihood" in self.names or ("margin" in self.names and self.reference is None):
            real = mean_log_likelihood(model, context.batch)
            if "likelihood" in self.names:
                values["likelihood"] = real
        if self.needs_generation:
            continuations = (
                self._generate(model, context.prompts, context.sampling_seed, self.generate_tokens)
                if written is None
                else written.tokens
            )
            if continuations is None:
                return {name: -math.inf for name in self.names}, None
            if self.names & {"self", "margin"}:
                scorer = self.reference if self.reference is not None else model
                generated = continuation_log_likelihood(scorer, context.prompts, continuations, self.context_length)
                if "self" in self.names:
                    values["self"] = generated
                if "margin" in self.names:
                    real_score = context.reference_real_score if self.reference is not None else real
                    values["margin"] = -max(0.0, self.margin + generated - real_score)
            if "diversity" in self.names:
                values["diversity"] = self.diversity_scale * diversity_score(continuations)
            if "novelty" in self.names:
                values["novelty"] = 0.0
        return values, continuations

    def _objectives(self, values: dict[str, float]) -> tuple[float, ...]:
        if not all(math.isfinite(v) for v in values.values()):
            # A diverged model is the worst on every objective, so it never sits on a Pareto front.
            bad = ", ".join(f"{name}={value}" for name, value in values.items() if not math.isfinite(value))
            warnings.warn(f"fitness term(s) {bad}; scored as -inf", RuntimeWarning, stacklevel=3)
            return (-math.inf,) * self.objectives
        if self.multi_objective:
            return tuple(values[name] for name, _ in self.active)
        return (finite_or_worst(sum(weight * values[name] for name, weight in self.active)),)

    @property
    def needs_population(self) -> bool:
        """True when a term (novelty) is finished on the driver with the whole population's results."""
        return "novelty" in self.names

    def writing(self, context: FitnessContext) -> Writing | None:
        """What every individual writes this generation (None: no active term reads continuations)."""
        if not self.needs_generation:
            return None
        return Writing(context.prompts, self.generate_tokens, self.temperature, context.sampling_seed)

    @property
    def reads_model_after_writing(self) -> bool:
        """Whether a term needs the candidate itself once its continuations are written (real-text
        likelihood, or the candidate scoring its own text): else ``written`` tokens are all it needs."""
        return "likelihood" in self.names or (self.reference is None and bool(self.names & {"self", "margin"}))

    @torch.no_grad()
    def __call__(self, model: nn.Module, context: FitnessContext, written: Written | None = None) -> tuple[float, ...]:
        """The objectives of one model scored alone (novelty 0)."""
        return self._objectives(self._scores(model, context, written)[0])

    @torch.no_grad()
    def scored(self, model: nn.Module, context: FitnessContext, written: Written | None = None) -> Scored:
        """The objectives with novelty still to add, and the n-gram profile novelty is measured on."""
        values, continuations = self._scores(model, context, written)
        objectives = self._objectives(values)
        names = [name for name, _ in self.active]
        index = names.index("novelty") if self.multi_objective else 0
        weight = self.diversity_scale * (1.0 if self.multi_objective else dict(self.active)["novelty"])
        finite = all(math.isfinite(v) for v in objectives)
        profile = ngram_profile(continuations) if finite and continuations is not None else None
        return Scored(objectives, index, weight, profile)

    # Report ------------------------------------------------------------------------------------

    def _fixed_report_prompts(self) -> torch.Tensor:
        """Evenly spaced validation prompts: the same for every generation and every run of a corpus."""
        if self._report_prompts is None:
            val = self.corpus.val
            starts = torch.linspace(0, len(val) - self.prompt_tokens, REPORT_PROMPTS).long()
            self._report_prompts = val[starts.unsqueeze(1) + torch.arange(self.prompt_tokens)].to(self.device)
        return self._report_prompts

    @torch.no_grad()
    def report(self, model: nn.Module, generation: int) -> dict:
        """Figures about the current (center or best) model logged every generation; generation -1 is the start.

        Always ``self_score`` (the model's mean log-likelihood of its own continuations), ``distinct_2``,
        ``repetition_rate`` and ``diversity`` (the share in [0, 1], not in nats), on fixed validation
        prompts with a fixed sampling seed;
        plus ``reference_score`` (the frozen scorer's view of the same text) with ``scorer=reference``.
        """
        prompts = self._fixed_report_prompts()
        keys = ["self_score", "distinct_2", "repetition_rate", "diversity"]
        if self.reference is not None:
            keys.append("reference_score")
        continuations = self._generate(model, prompts, derive_seed(self.run_seed, "fitness-report"), REPORT_NEW_TOKENS)
        if continuations is None:
            return {key: math.nan for key in keys}
        figures = {
            "self_score": continuation_log_likelihood(model, prompts, continuations, self.context_length),
            "distinct_2": distinct_n(continuations, 2),
            "repetition_rate": repetition_rate(continuations),
            "diversity": diversity_score(continuations),
        }
        if self.reference is not None:
            figures["reference_score"] = continuation_log_likelihood(
                self.reference, prompts, continuations, self.context_length
            )
        return figures


def build_fitness(config, corpus, device, model: nn.Module) -> Fitness:
    """The fitness of a run config. ``model`` is the freshly built base model (a reference scorer copies it)."""
    return Fitness(config, corpus, device, model)
