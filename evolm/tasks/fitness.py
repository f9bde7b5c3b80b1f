"""A task as an evolution run's fitness: every individual answers the same prompts, rewards normalised per prompt.

Within a generation every individual answers the same ``task.batch`` training prompts (common random
numbers) with the same decoding seed. Each worker sends back one value per prompt
(:class:`PromptScores`); once the whole population is in, the driver normalises each prompt's values
across the population (:func:`finish_prompt_scores`) and an individual's fitness is the mean over prompts:

- ``zscore``: (value - mean) / std over the population, per prompt (Qiu et al. 2025, arXiv 2509.24372,
  z-score rewards per generation; EGGROLL, arXiv 2511.16652, normalises per prompt);
- ``ranks``: centred ranks in [-0.5, 0.5] per prompt (Salimans et al. 2017's shaping, per prompt);
- ``none``: the raw values.

So a prompt every individual gets right (or wrong) adds nothing, and a hard prompt that one
individual solves counts as much as an easy one. Normalisation needs the whole population scored
together: it applies to es and cmaes. ga, nsga2 and pbt keep fitness across generations (elites,
members), which values normalised among different individuals would make incomparable: they use the
raw mean (``summary.json`` says which: ``task_normalise``).

The value per prompt is ``task.fitness``: ``reward`` (the task's own), ``partial`` (its partial credit)
or ``logprob`` (the candidate's mean log-probability per token of the correct completion: a dense
signal where a checker gives a small model only a few distinct scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from evolm.data import Corpus
from evolm.fitness import Writing, Written
from evolm.seeding import derive_seed
from evolm.tasks.runtime import TaskRuntime
from evolm.textstats import printable

NORMALISING_STRATEGIES = ("es", "cmaes", "snes")


@dataclass
class PromptScores:
    """One individual's values per prompt (to normalise on the driver) and its raw task rewards."""

    values: list[float]  # what the fitness is made of, per prompt; empty for a diverged individual
    rewards: list[float]  # the task's reward per prompt (the training reward), empty when diverged
    normalise: str = "none"  # how the driver normalises values per prompt (zscore | ranks | none)


@dataclass
class TaskContext:
    """What one generation shares: the prompts (text and tokens) and the decoding seed."""

    generation: int
    prompts: list[str]
    tokens: torch.Tensor
    seed: int


def uses_task(config) -> bool:
    """Whether the run's fitness is a task (``task.name`` or a user's ``task.reward``) instead of corpus terms."""
    return bool(config.task.name or config.task.reward)


def task_fitness(config, model: nn.Module, tokenizer, device, reward_function=None) -> tuple[TaskFitness, Corpus]:
    """A task run's fitness and corpus (the task's own text, or the configured one) for ``model`` as built."""
    runtime = TaskRuntime(config, model, tokenizer, device, reward_function)
    corpus = runtime.load_corpus()
    return TaskFitness(config, runtime), corpus


def effective_normalisation(config) -> str:
    """``task.normalise`` for strategies that score the whole population each generation, else ``none``."""
    return config.task.normalise if config.strategy.name in NORMALISING_STRATEGIES else "none"


def task_summary(config, final_report: dict) -> dict:
    """What summary.json says about a task run (empty without a task): which task, which fitness, which
    normalisation and decoding, and ``kl_from_initial`` (the final drift; ``reward_initial/final`` come
    from the report). Evolution runs and baselines both write it."""
    settings = config.task
    if not (settings.name or settings.reward):
        return {}
    return {
        "task": settings.name or "reward",
        "task_fitness": settings.fitness,
        "task_normalise": effective_normalisation(config),
        "task_decoding": settings.decoding,
        "kl_from_initial": final_report.get("kl_from_initial"),
    }


def _normalise(matrix: np.ndarray, how: str) -> np.ndarray:
    """Normalise each column (a prompt) of (individuals, prompts) across the individuals."""
    if how == "zscore":
        std = matrix.std(axis=0)
        return np.where(std > 0, (matrix - matrix.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)
    if how == "ranks":
        count = matrix.shape[0]
        if count < 2:
            return np.zeros_like(matrix)
        # Average ranks for ties, so that equal values get equal shaped values.
        order = matrix.argsort(axis=0, kind="stable").argsort(axis=0, kind="stable").astype(float)
        ranks = np.empty_like(order)
        for column in range(matrix.shape[1]):
            values = matrix[:, column]
            for value in np.unique(values):
                tied = values == value
                ranks[tied, column] = order[tied, column].mean()
        return ranks / (count - 1) - 0.5
    return matrix


def finish_prompt_scores(results: list) -> tuple[list[tuple[float]], dict]:
    """Fitness tuples for a population's :class:`PromptScores`, and the training-reward metrics.

    A diverged individual (no values) gets -inf and takes no part in any prompt's statistics."""
    how = results[0].normalise if results else "none"
    finite = [i for i, r in enumerate(results) if r.values]
    fitnesses: list[tuple[float]] = [(-math.inf,)] * len(results)
    metrics: dict = {}
    if finite:
        matrix = np.array([results[i].values for i in finite], dtype=np.float64)
        shaped = _normalise(matrix, how).mean(axis=1)
        for index, value in zip(finite, shaped):
            fitnesses[index] = (float(value),)
        rewards = np.array([results[i].rewards for i in finite], dtype=np.float64).mean(axis=1)
        metrics = {"train_reward": float(rewards.mean()), "train_reward_best": float(rewards.max())}
        metrics["distinct_values"] = len({tuple(row) for row in matrix.round(9).tolist()})
    return fitnesses, metrics


class TaskFitness:
    """The worker-facing fitness of a task run (``context``, ``__call__``, ``scored``, ``tokens``, ``report``)."""

    def __init__(self, config, runtime: TaskRuntime):
        self.runtime = runtime
        self.kind = config.task.fitness
        self.normalise = effective_normalisation(config)
        self.run_seed = config.seed
        self.objectives = 1

    @property
    def needs_population(self) -> bool:
        """The worker returns :class:`PromptScores`; the driver normalises them (always: it also logs the rewards)."""
        return True

    def context(self, generation: int) -> TaskContext:
        prompts = self.runtime.generation_prompts(generation)
        seed = derive_seed(self.run_seed, "task-decoding", generation)
        return TaskContext(generation, prompts, self.runtime.encode(prompts), seed)

    def tokens(self, context: TaskContext) -> int:
        total = self.runtime.write_tokens(context.tokens)
        if self.runtime.task.name == "self-feedback":
            total += self.runtime.scored_tokens(context.tokens)  # the frozen scorer reads every completion
        if self.kind == "logprob":
            answer = len(self.runtime.tokenizer.encode(self.runtime.answer_completions(context.prompts[:1])[0]))
            total += self.runtime.scored_tokens(context.tokens, answer)
        return total

    def writing(self, context: TaskContext) -> Writing:
        """What every individual writes this generation: the generation's prompts, seeded alike."""
        runtime = self.runtime
        return Writing(context.tokens, runtime.new_tokens, runtime.temperature, context.seed)

    @property
    def reads_model_after_writing(self) -> bool:
        """Only the dense ``logprob`` fitness reads the candidate again (the answers' log-probabilities)."""
        return self.kind == "logprob"

    @torch.no_grad()
    def scored(self, model: nn.Module, context: TaskContext, written: Written | None = None) -> PromptScores:
        """``written``: the continuations written beforehand (a batched population pass), else ``model`` writes."""
        runtime = self.runtime
        new = runtime.write(model, context.tokens, context.seed) if written is None else written.tokens
        if new is None:
            return PromptScores([], [], self.normalise)
        completions = runtime.decode(new)
        rewards = runtime.rewards(context.prompts, completions)
        if self.kind == "reward":
            values = rewards
        elif self.kind == "partial":
            values = runtime.rewards(context.prompts, completions, partial=True)
        else:  # logprob: the correct completion's log-probability, a dense signal
            answers = runtime.answer_completions(context.prompts)
            values = runtime.completion_log_likelihoods(model, context.prompts, answers)
        if not all(math.isfinite(v) for v in values):
            return PromptScores([], [], self.normalise)
        return PromptScores(values, rewards, self.normalise)

    @torch.no_grad()
    def __call__(self, model: nn.Module, context: TaskContext, written: Written | None = None) -> tuple[float]:
        """The raw mean value of one model scored alone (pbt; no population to normalise against)."""
        scores = self.scored(model, context, written)
        return (float(np.mean(scores.values)),) if scores.values else (-math.inf,)

    @torch.no_grad()
    def report(self, model: nn.Module, generation: int) -> dict:
        return self.runtime.report(model)

    @torch.no_grad()
    def examples(self, model: nn.Module, count: int = 4) -> str:
        """The first ``count`` held-out prompts, the model's greedy completions and their rewards, one per line."""
        runtime = self.runtime
        prompts = runtime.heldout_prompts[:count]
        new = runtime.write(model, runtime.encode(prompts), self.run_seed, temperature=0.0)
        if new is None:
            return "  (the model has diverged: no completions)"
        completions = runtime.decode(new)
        rewards = runtime.rewards(prompts, completions)
        return "\n".join(
            f"  {_one_line(prompt)} -> {_one_line(completion)}  (reward {reward:.3g})"
            for prompt, completion, reward in zip(prompts, completions, rewards)
        )


def _one_line(text: str) -> str:
    """``text`` safe for a terminal, on one line: newlines and tabs shown as \\n and \\t."""
    return printable(text).replace("\n", "\\n").replace("\t", "\\t")
