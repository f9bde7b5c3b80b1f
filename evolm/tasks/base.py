"""What a task is: prompts (train and held-out splits) and a reward on (prompt, completion) without a gradient.

A task is plain strings and plain functions, so that a checker, a constraint or a user's own function
all look alike: ``reward(prompts, completions) -> list[float]``, one value per pair, higher is better.
Everything that needs a model (writing the completions, the frozen scorer of the self-feedback
reward, the dense fitness, the KL from the initial model) lives in :mod:`evolm.tasks.runtime`.

Prompts are generated offline and reproducibly from a seed (``task.seed``): the same seed gives the
same train and held-out lists on every machine. A completion is what the model writes after its
prompt, cut at the task's ``stop`` string (a newline for one-line answers) and never longer than
``new_tokens`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from evolm.errors import UsageError

# reward(prompts, completions) -> one float per pair
Reward = Callable[[list[str], list[str]], list[float]]
# score(prompts, completions) -> the frozen initial model's mean log-likelihood per token of each completion
ReferenceScorer = Callable[[list[str], list[str]], list[float]]

# What a run's fitness is made of, for a task (``task.fitness``):
FITNESS_KINDS = ("reward", "partial", "logprob")


@dataclass
class Task:
    """A task's prompts and reward. Only ``name``, the prompts, ``reward`` and ``new_tokens`` are required."""

    name: str
    train_prompts: list[str]
    heldout_prompts: list[str]
    reward: Reward
    new_tokens: int  # longest completion, in tokens
    stop: str | None = "\n"  # a completion ends before the first stop string (None: only new_tokens ends it)
    description: str = ""
    # The text a start model is trained on (``evolm train --task NAME``) and the KL drift is measured on;
    # None: the configured corpus (``data.path``, the embedded one by default).
    corpus_text: str | None = None
    # Denser fitnesses for evolution where the task allows them (``task.fitness``): ``partial`` is a
    # reward with partial credit (e.g. per digit); ``answers`` gives each prompt's correct completion,
    # whose log-probability under the candidate is the ``logprob`` fitness. The held-out figure is
    # always ``reward``.
    partial: Reward | None = None
    answers: Callable[[list[str]], list[str]] | None = None
    # Extra fields a task wants in summary.json (how it was built: sizes, held-out class, ...).
    info: dict = field(default_factory=dict)

    def fitness_kinds(self) -> tuple[str, ...]:
        """The ``task.fitness`` values this task supports."""
        kinds = ["reward"]
        if self.partial is not None:
            kinds.append("partial")
        if self.answers is not None:
            kinds.append("logprob")
        return tuple(kinds)


def check_rewards(values, count: int, who: str) -> list[float]:
    """``values`` as ``count`` finite floats, or a one-line UsageError naming ``who`` (the reward function)."""
    try:
        values = [float(value) for value in values]
    except (TypeError, ValueError):
        raise UsageError(
            f"reward {who} must return a list of {count} numbers, got {type(values).__name__} {values!r:.80}"
        ) from None
    if len(values) != count:
        raise UsageError(f"reward {who} returned {len(values)} values for {count} completions")
    bad = [value for value in values if not math.isfinite(value)]
    if bad:
        raise UsageError(f"reward {who} returned {bad[0]} (rewards must be finite numbers)")
    return values


def split_prompts(prompts: list[str], heldout_share: float, generator) -> tuple[list[str], list[str]]:
    """A seeded shuffle of ``prompts`` cut into (train, held-out); ``generator`` is a numpy Generator."""
    order = generator.permutation(len(prompts))
    shuffled = [prompts[i] for i in order]
    heldout = max(1, int(round(len(prompts) * heldout_share)))
    return shuffled[heldout:], shuffled[:heldout]
