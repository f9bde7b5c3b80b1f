"""Two-digit sums with a verifiable answer: a Countdown-style task sized for a small byte-level model.

Qiu et al. 2025 (arXiv 2509.24372) fine-tune trained models with evolution strategies on Countdown, a
task whose answer a checker verifies. Here a problem is ``"07+35="`` and its answer ``"042"``: both
operands zero-padded to two digits, the sum to three, one problem per line (``"07+35=042\\n"``).

A calibration on the default GPT found the naive version a poor benchmark: with every sum in the
training text, Adam jumps from 8% to 92% right between 20 s and 30 s of training, so any start point
sits on a cliff where ten more seconds of plain training beat any reward method. So one class of
problems is kept *out* of the training text: sums with a carry from the units digit
(``a % 10 + b % 10 >= 10``; 4,500 of the 10,000 pairs). The generated training corpus
(:attr:`Task.corpus_text`, ``evolm train --task arithmetic``) holds every no-carry problem and only a
small share (:data:`CARRY_SHARE`) of the carry problems, so that a short ``adam`` run is right on
held-out carry problems some of the time and the reward has something left to teach. The carry
problems split three ways, disjoint: the corpus's share, :data:`HELDOUT_PROBLEMS` held-out prompts
(the report's figure) and the rest as training prompts for the reward methods.

Rewards (each completion is first cut at the stop string, a newline, and stripped of spaces):

- ``reward``: 1.0 for the exact three-digit answer, else 0.0;
- ``partial``: the answer digits right in place, divided by the longer of the answer (3) and the
  completion, so that ``"042"`` scores 1.0, ``"043"`` 2/3, ``"0421"`` (no stop written) 3/4 and
  ``""`` 0.0: partial credit is 1.0 exactly when the answer is right;
- ``answers``: each prompt's correct completion (``"042"``), whose log-probability under a candidate
  is the ``logprob`` fitness.
"""

from __future__ import annotations

import re

from evolm.seeding import numpy_generator
from evolm.tasks.base import Task

OPERAND_DIGITS = 2
ANSWER_DIGITS = 3
NEW_TOKENS = ANSWER_DIGITS + 1  # the answer and its newline
HELDOUT_PROBLEMS = 1000  # held-out carry problems: the report's figure is the mean over these
# Every problem appears once per pass, each pass in its own shuffled order. Several passes keep every
# problem in the training part of the text: the corpus's last 10% (data.val_fraction) validates.
CORPUS_PASSES = 4
# Share of the 4,500 carry problems that go into the training corpus, and the adam step count of the
# recommended start point (batch 32 x 64 bytes, lr 3e-3, default GPT, model seed 0, task seed 0),
# chosen by benchmarks/arithmetic_calibration.py (benchmarks/results/arithmetic_calibration.json).
# Exact answers on the 1,000 held-out carry problems (greedy), by adam step, one run per share:
#   share 0    (no carry problem in the text): 0% at every step to 3,000 (no-carry problems 88% right);
#   share 0.02 (90 in the text):  0.1% at 1,250, 12% at 1,375, 16-29% from 1,625 to 2,375, 41% at 3,000;
#   share 0.05 (225 in the text): 2.7% at 1,000, 16% at 1,375, 24% at 1,625, 24-30% to 2,125, 40% at 3,000.
# So the carry rule is learnt from the few examples, slowly, after the rest of the text. The start
# point: share 0.05 at 1,625 steps, 24.0% exact (partial credit 0.615, no-carry problems 87.9%), at
# most 29.6% within 500 more steps and never above 50% by 3,000: not on a cliff, with room to teach.
# That grid was measured before the split became one by unordered pair (no held-out sum's swapped twin
# in the corpus or the training prompts); with it, the same 1,625-step start gets 36.8% of the held-out
# carry sums right (validation loss 0.960; benchmarks/tasks.py's start point). Not recalibrated yet.
CARRY_SHARE = 0.05
START_STEPS = 1625
HELDOUT_CLASS = "sums with a carry from the units digit (a % 10 + b % 10 >= 10)"

_PROMPT = re.compile(rf"^(\d{{{OPERAND_DIGITS}}})\+(\d{{{OPERAND_DIGITS}}})=$")


def has_carry(a: int, b: int) -> bool:
    """Whether a + b carries from the units digit (the class kept out of the training text)."""
    return a % 10 + b % 10 >= 10


def problem_prompt(a: int, b: int) -> str:
    return f"{a:0{OPERAND_DIGITS}d}+{b:0{OPERAND_DIGITS}d}="


def problem_answer(a: int, b: int) -> str:
    return f"{a + b:0{ANSWER_DIGITS}d}"


def parse_prompt(prompt: str) -> tuple[int, int]:
    """The operands of a prompt ``"AB+CD="``."""
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"arithmetic prompt {prompt!r} is not of the form 'AB+CD='")
    return int(match.group(1)), int(match.group(2))


def answers(prompts: list[str]) -> list[str]:
    """Each prompt's correct completion, without the stop string: ``"07+35="`` -> ``"042"``."""
    return [problem_answer(*parse_prompt(prompt)) for prompt in prompts]


def _answered(completion: str) -> str:
    """What a completion answers: the text before the first newline, without surrounding spaces."""
    return completion.split("\n", 1)[0].strip()


def exact_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1.0 for the exact answer (after cutting at the newline), else 0.0."""
    return [float(_answered(c) == answer) for c, answer in zip(completions, answers(prompts))]


def partial_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """Answer digits right in place over max(3, completion length): 1.0 exactly when the answer is right."""
    values = []
    for completion, answer in zip(completions, answers(prompts)):
        written = _answered(completion)
        right = sum(1 for mine, true in zip(written, answer) if mine == true)
        values.append(right / max(len(answer), len(written)))
    return values


def split_problems(seed: int, carry_share: float | None = None) -> dict[str, list[tuple[int, int]]]:
    """All pairs split into ``no_carry`` (all in the corpus) and the carry problems' three disjoint parts.

    The split is by *unordered* pair: a + b and b + a (the same answer) always fall in the same part,
    so no held-out problem has its swapped twin among the training prompts or in the corpus. The
    held-out part is the first :data:`HELDOUT_PROBLEMS` problems of a seeded order of the carry pairs
    (whole pairs, so it may hold one more), independent of ``carry_share``; the corpus's share comes
    next, the training prompts last.
    """
    carry_share = CARRY_SHARE if carry_share is None else carry_share
    if not 0.0 <= carry_share <= 1.0:
        raise ValueError(f"carry_share must be in [0, 1], got {carry_share}")
    pairs = [(a, b) for a in range(10**OPERAND_DIGITS) for b in range(10**OPERAND_DIGITS)]
    carry = [pair for pair in pairs if has_carry(*pair)]
    groups = sorted({tuple(sorted(pair)) for pair in carry})  # one entry per unordered pair
    order = numpy_generator(seed, "arithmetic", "carry-split").permutation(len(groups))
    parts: dict[str, list[tuple[int, int]]] = {"heldout": [], "corpus_carry": [], "train": []}
    in_corpus = int(round(carry_share * len(carry)))
    for index in order:
        low, high = groups[index]
        problems = [(low, high)] if low == high else [(low, high), (high, low)]
        if len(parts["heldout"]) < HELDOUT_PROBLEMS:
            parts["heldout"].extend(problems)
        elif len(parts["corpus_carry"]) < in_corpus:
            parts["corpus_carry"].extend(problems)
        else:
            parts["train"].extend(problems)
    return {"no_carry": [pair for pair in pairs if not has_carry(*pair)], **parts}


def corpus_lines(seed: int, problems: list[tuple[int, int]], passes: int = CORPUS_PASSES) -> str:
    """``passes`` shuffled passes over ``problems``, one ``"AB+CD=EFG\\n"`` line each."""
    text: list[str] = []
    for index in range(passes):
        order = numpy_generator(seed, "arithmetic", "corpus-pass", index).permutation(len(problems))
        text.extend(problem_prompt(*problems[i]) + problem_answer(*problems[i]) + "\n" for i in order)
    return "".join(text)


def arithmetic_task(seed: int, carry_share: float | None = None) -> Task:
    """The task for a data seed, with ``carry_share`` (default :data:`CARRY_SHARE`) of the carry problems in
    its training corpus."""
    carry_share = CARRY_SHARE if carry_share is None else carry_share
    parts = split_problems(seed, carry_share)
    corpus_problems = parts["no_carry"] + parts["corpus_carry"]
    return Task(
        name="arithmetic",
        train_prompts=[problem_prompt(*pair) for pair in parts["train"]],
        heldout_prompts=[problem_prompt(*pair) for pair in parts["heldout"]],
        reward=exact_reward,
        new_tokens=NEW_TOKENS,
        stop="\n",
        description=(
            "two-digit sums 'AB+CD=' answered with three digits; reward 1 for the exact answer. "
            f"Held out of the training text: {HELDOUT_CLASS}, but for {len(parts['corpus_carry'])} of them"
        ),
        corpus_text=corpus_lines(seed, corpus_problems),
        partial=partial_reward,
        answers=answers,
        info={
            "heldout_class": HELDOUT_CLASS,
            "carry_share": carry_share,
            "corpus_problems": len(corpus_problems),
            "corpus_carry_problems": len(parts["corpus_carry"]),
            "corpus_passes": CORPUS_PASSES,
            "train_prompts": len(parts["train"]),
            "heldout_prompts": len(parts["heldout"]),
            "start_steps": START_STEPS,
        },
    )


def build_arithmetic(settings, corpus_text: str, reference) -> Task:
    """The arithmetic task of ``settings.seed``; it brings its own corpus and needs no reference scorer.

    :data:`CARRY_SHARE` is read when the task is built (benchmarks/arithmetic_calibration.py sets each
    candidate share in turn and trains on the task as ``evolm train --task arithmetic`` does)."""
    return arithmetic_task(settings.seed, CARRY_SHARE)
