"""The shipped tasks and their registry: ``--task NAME`` (``task.name``) picks one.

- ``self-feedback``: the seed document's objective, the frozen initial model's log-likelihood of the
  completion plus a diversity term (:mod:`evolm.tasks.self_feedback`);
- ``arithmetic``: two-digit sums with a checked answer, sums with a carry kept out of the training
  text (:mod:`evolm.tasks.arithmetic`, in the spirit of Countdown in Qiu et al. 2025, arXiv 2509.24372);
- ``python-lines``: finish a line of Python so that it parses (:mod:`evolm.tasks.python_lines`);
- ``reward``: a user's own function, ``task.reward = "module:function"`` or ``reward=callable``
  through :func:`evolm.evolve` (:mod:`evolm.tasks.user`).

Each builder has one signature, ``build(settings, corpus_text, reference) -> Task`` (``settings`` the
run's ``task`` section, ``corpus_text`` the configured corpus, ``reference`` the frozen scorer or
None); a new task is one module and one line in :data:`TASKS` and :data:`TASK_FITNESS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from evolm.errors import UsageError
from evolm.tasks.arithmetic import build_arithmetic
from evolm.tasks.base import FITNESS_KINDS, ReferenceScorer, Task
from evolm.tasks.python_lines import build_python_lines
from evolm.tasks.self_feedback import build_self_feedback
from evolm.tasks.user import build_user_task, parse_reward_spec

TASKS: dict[str, Callable[..., Task]] = {
    "self-feedback": build_self_feedback,
    "arithmetic": build_arithmetic,
    "python-lines": build_python_lines,
    "reward": build_user_task,
}
# The task.fitness values each task offers (what Task.fitness_kinds says of the built task; known
# here without building it, so a config is checked before anything runs).
TASK_FITNESS: dict[str, tuple[str, ...]] = {
    "self-feedback": ("reward",),
    "arithmetic": ("reward", "partial", "logprob"),
    "python-lines": ("reward",),
    "reward": ("reward",),
}
DECODINGS = ("greedy", "sample")
NORMALISATIONS = ("zscore", "ranks", "none")

__all__ = [
    "DECODINGS",
    "FITNESS_KINDS",
    "NORMALISATIONS",
    "TASKS",
    "TASK_FITNESS",
    "Task",
    "make_task",
    "task_names",
    "validate_task_config",
]


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def _unknown(name: str) -> UsageError:
    return UsageError(f"config field task.name: unknown task {name!r} (choose from {', '.join(TASKS)})")


def make_task(
    settings, corpus_text: str, reference: ReferenceScorer | None, reward_function: Callable | None = None
) -> Task:
    """The task ``settings.name`` names (``reward`` when only ``settings.reward`` or ``reward_function`` is set).

    ``reward_function``: a user's callable given through the Python API, used instead of ``settings.reward``.
    """
    name = settings.name or ("reward" if settings.reward or reward_function is not None else "")
    if name not in TASKS:
        raise _unknown(name)
    if name == "reward":
        return build_user_task(settings, corpus_text, reference, reward_function)
    if reward_function is not None:
        raise UsageError(f"reward=: a reward function makes the task 'reward', but task.name is {name!r}")
    return TASKS[name](settings, corpus_text, reference)


def validate_task_config(config) -> None:
    """Check the ``task`` section, one line naming the field; builds no model and reads no file.

    A ``task.reward`` without a ``task.name`` sets the name to ``reward``. That the reward imports and
    the prompts file reads is checked when the task is built (:func:`make_task`)."""
    task = config.task
    if task.reward and not task.name:
        task.name = "reward"
    if task.name and task.name not in TASKS:
        raise _unknown(task.name)
    if task.reward:
        if task.name != "reward":
            raise UsageError(f"config field task.reward is for task 'reward', but task.name is {task.name!r}")
        parse_reward_spec(task.reward)
    if task.prompts and task.name != "reward":
        raise UsageError(
            f"config field task.prompts is for a reward of your own (--reward); task {task.name or '(none)'} "
            "brings its own prompts"
        )
    checks = (
        ("task.batch", task.batch > 0, "must be positive"),
        ("task.heldout", task.heldout >= 0, "must be 0 (the whole held-out split) or positive"),
        ("task.new_tokens", task.new_tokens >= 0, "must be 0 (the task's own) or positive"),
        ("task.kl_sequences", task.kl_sequences > 0, "must be positive"),
        ("task.diversity", math.isfinite(task.diversity) and task.diversity >= 0, "must be a finite number >= 0"),
    )
    for field, ok, rule in checks:
        if not ok:
            raise UsageError(f"config field {field} {rule}, got {getattr(task, field.split('.')[1])}")
    for field, value, choices in (
        ("task.decoding", task.decoding, DECODINGS),
        ("task.normalise", task.normalise, NORMALISATIONS),
        ("task.fitness", task.fitness, FITNESS_KINDS),
    ):
        if value not in choices:
            raise UsageError(f"config field {field} must be one of {', '.join(choices)}, got {value!r}")
    if task.name and task.fitness not in TASK_FITNESS[task.name]:
        raise UsageError(
            f"config field task.fitness: task {task.name} offers {', '.join(TASK_FITNESS[task.name])}, "
            f"not {task.fitness!r}"
        )
