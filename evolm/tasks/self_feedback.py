"""The seed document's objective as a task: text the frozen initial model finds likely, kept diverse.

The seed trains a model with cross-entropy (its §5.1) and then optimises it against a self-scored
reward (§5.2): the mean log-likelihood of its own continuation. Scored by the model being trained,
that reward is won by collapsing onto one string the model already likes; here the scorer is the
*frozen initial* model (the reference scorer of :mod:`evolm.tasks.runtime`), and a diversity term
makes a population that writes the same thing for every prompt score worse:

    reward_i = reference(prompts, completions)[i]
               + diversity * ln(256) * (diversity_score(completion_i) + diversity_score(completions)) / 2

``diversity_score`` (:mod:`evolm.textstats`: mean of distinct-1..4 and 1 - repetition rate, in
[0, 1]) is taken twice, on byte sequences: of the completion alone (a completion that loops on one
word scores low) and of *all* the completions of one call (the same for every pair in a call: it
rewards a model whose answers differ across prompts). The first half gives a policy-gradient
method's group of completions of one prompt a signal against loops, which a term shared by the whole
call cannot (its group baseline subtracts it); the second half is what stops a population from
writing the same string for every prompt. Scaled by ln(256), the log-likelihood of a uniform byte, one unit of diversity share is worth as much
as going from a uniform guess to a certain one; ``task.diversity`` weighs it (0 turns it off).

Prompts are windows of :data:`WINDOW_CHARACTERS` characters of the configured corpus (the embedded
CPython documentation by default): training prompts from its first 90%, held-out prompts from its
last 10%, at start positions drawn from ``task.seed``. A completion is :data:`NEW_TOKENS` tokens, not
cut at any stop string.
"""

from __future__ import annotations

import math

from evolm.errors import UsageError
from evolm.seeding import numpy_generator
from evolm.tasks.base import ReferenceScorer, Task
from evolm.textstats import diversity_score

WINDOW_CHARACTERS = 16
TRAIN_WINDOWS = 4096
HELDOUT_WINDOWS = 256
HELDOUT_SHARE = 0.1  # the corpus's last 10% gives the held-out windows (data.val_fraction's default)
NEW_TOKENS = 32
UNIFORM_BYTE_NATS = math.log(256)


def corpus_windows(
    text: str,
    seed: int,
    task_name: str,
    length: int = WINDOW_CHARACTERS,
    train_count: int = TRAIN_WINDOWS,
    heldout_count: int = HELDOUT_WINDOWS,
) -> tuple[list[str], list[str]]:
    """(train, held-out) windows of ``length`` characters: train from the first 90% of ``text``, held-out
    from the last 10%, each at distinct start positions drawn from ``seed`` (fewer when the text is short)."""
    boundary = int(len(text) * (1.0 - HELDOUT_SHARE))
    parts = {"train": (0, boundary, train_count), "heldout": (boundary, len(text), heldout_count)}
    windows = {}
    for split, (start, end, count) in parts.items():
        starts = end - start - length + 1  # windows that fit in the part
        if starts < 1:
            raise UsageError(
                f"task {task_name}: the corpus is too short for prompts of {length} characters "
                f"({len(text)} characters; its last 10% holds the held-out prompts)"
            )
        generator = numpy_generator(seed, task_name, "windows", split)
        picks = generator.choice(starts, size=min(count, starts), replace=False)
        windows[split] = [text[start + int(pick) : start + int(pick) + length] for pick in picks]
    return windows["train"], windows["heldout"]


class SelfFeedbackReward:
    """The frozen scorer's log-likelihood of each completion plus the call's diversity term (picklable
    when its scorer is)."""

    def __init__(self, reference: ReferenceScorer | None, diversity: float):
        self.reference = reference
        self.diversity = float(diversity)

    def diversity_bonus(self, completions: list[str]) -> list[float]:
        """diversity * ln(256) * the mean of each completion's own diversity and that of all of them, as bytes."""
        if self.diversity == 0.0:
            return [0.0] * len(completions)
        rows = [list(c.encode()) for c in completions]
        shared = diversity_score(rows)
        return [self.diversity * UNIFORM_BYTE_NATS * (diversity_score([row]) + shared) / 2 for row in rows]

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if self.reference is None:
            raise RuntimeError(
                "task self-feedback needs the frozen initial model as its scorer; "
                "build it through evolm.tasks.runtime.TaskRuntime (reference=None was given)"
            )
        bonuses = self.diversity_bonus(completions)
        return [float(score) + bonus for score, bonus in zip(self.reference(prompts, completions), bonuses)]


def build_self_feedback(settings, corpus_text: str, reference: ReferenceScorer | None) -> Task:
    """Windows of ``corpus_text`` rewarded by the frozen initial model and the diversity of the answers."""
    if not math.isfinite(settings.diversity) or settings.diversity < 0:
        raise UsageError(f"config field task.diversity must be a finite number >= 0, got {settings.diversity}")
    train, heldout = corpus_windows(corpus_text, settings.seed, "self-feedback")
    return Task(
        name="self-feedback",
        train_prompts=train,
        heldout_prompts=heldout,
        reward=SelfFeedbackReward(reference, settings.diversity),
        new_tokens=NEW_TOKENS,
        stop=None,
        description=(
            "continue a corpus window; reward: the frozen initial model's mean log-likelihood per token "
            f"plus {settings.diversity:g} * ln(256) * the mean of its own diversity and that of all the call's completions"
        ),
        info={
            "window_characters": WINDOW_CHARACTERS,
            "train_prompts": len(train),
            "heldout_prompts": len(heldout),
            "diversity": settings.diversity,
        },
    )
