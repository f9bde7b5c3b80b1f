"""Gradient baselines beside evolution: ``adam``, ``reinforce``, ``mezo``, ``grpo`` and ``rloo``, on one budget and run folder.

Each baseline is one readable file (CleanRL style) with one signature::

    run_X(config, out_dir, budget_seconds=None, budget_tokens=None, log=print, **options) -> summary dict

It starts from the same initial weights as an evolution run (``build_model(config.model, config.seed)``),
draws every random number from generators derived from ``config.seed``, stops at whichever budget
comes first (wall seconds, or forward tokens: tokens put through forward passes, validation and
reports excluded, as in the engine), and writes the files of an evolution run: ``config.toml``,
``metrics.jsonl``, ``summary.json`` and ``model.safetensors``.

Each baseline file holds only its own algorithm, citing its paper; what they share lives beside
them: :mod:`evolm.baselines.harness` (:class:`BaselineRun`: budget, run folder, logging, validation,
report), :mod:`evolm.baselines.environment` (the token-level environment of the self-feedback
objective) and :mod:`evolm.baselines.policy_gradient` (GRPO's and RLOO's groups of sampled
completions on a task's reward, the k3 KL and their loop). This module is the registry: a new
baseline is one file plus one line in ``BASELINES``.

With a task (``task.name``, :mod:`evolm.tasks`) every baseline reads the task's corpus (``adam`` on
``task.name = "arithmetic"`` trains the usual start point on the task's own text) and reports what an
evolution run with that task reports: ``reward`` (held-out, greedy), ``kl_from_initial`` and
``distinct_2``. ``grpo`` (Shao et al. 2024, arXiv 2402.03300) and ``rloo`` (Ahmadian et al. 2024,
arXiv 2402.14740) need a task: they maximise its reward, with a KL penalty to the initial model.

What a logged line means for a baseline: one *evaluation* is one model scored on one batch (adam:
a training step; mezo: each of the two perturbed forwards; reinforce: one batch of episodes; grpo and
rloo: one step's groups of completions), its *fitness* is higher-is-better (adam and mezo: the batch's
mean log-likelihood; reinforce: the batch's self-score; grpo and rloo: the batch's mean task reward),
and ``best/mean/std_fitness`` summarise the evaluations since the previous line.
Every line also carries ``val_loss`` (the worker's fixed validation windows) and, from
:meth:`BaselineRun.report`, ``self_score`` (mean log-likelihood of the model's own continuations of
fixed validation prompts under ``fitness.scorer``: the model itself, or the frozen initial model) and
``distinct_2`` of those continuations;
``summary.json`` has them as ``*_initial`` / ``*_final``, plus ``peak_rss_mb`` and the options used.
"""

from __future__ import annotations

from collections.abc import Callable

from evolm.baselines.adam import run_adam
from evolm.baselines.environment import TokenEnvironment, rollout, sample_tokens
from evolm.baselines.grpo import run_grpo
from evolm.baselines.harness import BaselineRun
from evolm.baselines.mezo import run_mezo
from evolm.baselines.reinforce import run_reinforce
from evolm.baselines.rloo import run_rloo

# name -> run(config, out_dir, budget_seconds=None, budget_tokens=None, log=print, **options) -> summary
BASELINES: dict[str, Callable[..., dict]] = {
    "adam": run_adam,
    "reinforce": run_reinforce,
    "mezo": run_mezo,
    "grpo": run_grpo,
    "rloo": run_rloo,
}

__all__ = [
    "BASELINES",
    "BaselineRun",
    "TokenEnvironment",
    "rollout",
    "run_adam",
    "run_grpo",
    "run_mezo",
    "run_reinforce",
    "run_rloo",
    "sample_tokens",
]
