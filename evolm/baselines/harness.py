"""What every gradient baseline shares: options checks, budget, run folder, logging, validation and report.

A baseline file (adam.py, reinforce.py, mezo.py) holds only its algorithm; it makes a
:class:`BaselineRun`, asks :meth:`BaselineRun.can_step` before each step, hands each finished step to
:meth:`BaselineRun.record` and :meth:`BaselineRun.maybe_log`, and ends with :meth:`BaselineRun.finish`.

The run starts from the same initial weights as an evolution run (:func:`initial_model`: a built-in model's
seeded initialisation or the trained weights of ``model.init``, or an ``hf:PATH`` checkpoint and its tokenizer),
stops at whichever budget comes first (wall seconds, forward tokens or steps) and writes the files of an
evolution run (``config.toml``, ``metrics.jsonl``, ``summary.json``, ``model.safetensors``) with the
helpers of :mod:`evolm.rundir`.

With a task (``task.name`` or ``task.reward``, :func:`evolm.tasks.fitness.uses_task`) the run holds the
task's :class:`~evolm.tasks.runtime.TaskRuntime` as ``run.task``, built on the initial model before
any update: the corpus is the task's (arithmetic and python-lines bring their own text, so ``adam``
with a task trains a start point on it), the frozen reference is the runtime's, and the report is the
task's (held-out reward, ``kl_from_initial``, distinct-2), as in an evolution run with that task.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import tomli_w
import torch
from torch import nn

from evolm.adapters import unwrap
from evolm.assembly import load_corpus
from evolm.baselines.environment import TokenEnvironment, rollout
from evolm.data import ByteTokenizer
from evolm.errors import UsageError
from evolm.fitness import mean_log_likelihood
from evolm.models import build_initial_model, count_parameters, resolve_device
from evolm.models.hf import build_hf, is_hf, resolved_params
from evolm.rundir import json_number, peak_rss_mb, prepare_run_dir, save_model_file, toml_ready, write_json
from evolm.seeding import torch_generator
from evolm.tasks.fitness import task_summary, uses_task
from evolm.tasks.runtime import TaskRuntime
from evolm.textstats import distinct_n

# How a baseline trains when it runs with a task (summary.json's task_fitness, task_normalise, task_decoding):
# adam and mezo lower the task corpus's next-token loss, reinforce maximises the frozen model's score of
# its samples; a baseline on the task's reward (grpo, rloo) sets ``run.task_training`` itself.
TASK_TRAINING_OF_METHOD = {
    "adam": {"task_fitness": "likelihood", "task_normalise": "none", "task_decoding": "none"},
    "mezo": {"task_fitness": "likelihood", "task_normalise": "none", "task_decoding": "none"},
    "reinforce": {"task_fitness": "self", "task_normalise": "batch-mean", "task_decoding": "sample"},
}


def weights_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite, read from the device once (not once per tensor)."""
    return bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all())


def check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise UsageError(f"baseline option {name} must be a positive number, got {value!r}")


def check_episode_fits(config, prompt_tokens: int, generate_tokens: int) -> None:
    """A Transformer scores prompt + continuation in one forward pass: it must fit the learned positions."""
    check_positive("prompt_tokens", prompt_tokens)
    check_positive("generate_tokens", generate_tokens)
    if config.model.name == "gpt" and prompt_tokens + generate_tokens - 1 > config.model.context:
        raise UsageError(
            f"baseline options prompt_tokens ({prompt_tokens}) + generate_tokens ({generate_tokens}) - 1 "
            f"exceed model.context ({config.model.context}); shorten the prompts or the generations"
        )


def initial_model(config, device) -> tuple[torch.nn.Module, object]:
    """The model every method starts from, on ``device``, and its tokenizer: a built-in model (its seed's
    weights or ``model.init``'s) on bytes, or ``hf:PATH``'s checkpoint with the checkpoint's own tokenizer."""
    if is_hf(config.model.name):
        return build_hf(config, device)
    return build_initial_model(config.model, config.seed).to(device), ByteTokenizer()


class BaselineRun:
    """What every baseline shares: budget, corpus, initial model, validation, logging, the run folder."""

    def __init__(
        self,
        method: str,
        config,
        out_dir,
        budget_seconds=None,
        budget_tokens=None,
        steps=None,
        log_every: int = 10,
        overwrite: bool = False,
        log=print,
        before_start=None,
    ):
        """``before_start(run)``: a baseline's own checks that need the model, corpus or task, called
        before the run folder is written, so that a mistake it reports leaves nothing behind."""
        self.started = time.perf_counter()
        check_positive("budget_seconds", budget_seconds, allow_none=True)
        check_positive("budget_tokens", budget_tokens, allow_none=True)
        check_positive("steps", steps, allow_none=True)
        check_positive("log_every", log_every)
        self.method = method
        self.config = config
        self.budget_seconds = budget_seconds
        self.budget_tokens = budget_tokens
        # Without any budget, a baseline takes as many steps as the config has generations.
        self.steps = steps if steps is not None or budget_seconds or budget_tokens else config.generations
        self.log_every = int(log_every)
        self.log = log
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.task: TaskRuntime | None = None
        self.task_training = dict(TASK_TRAINING_OF_METHOD.get(method, TASK_TRAINING_OF_METHOD["adam"]))
        self.model, self.tokenizer = initial_model(config, self.device)
        if uses_task(config):
            # The runtime's frozen reference is a copy of the initial model: taken before any update.
            self.task = TaskRuntime(config, self.model, self.tokenizer, self.device)
            self.corpus = self.task.load_corpus()
        else:
            self.corpus = load_corpus(config, self.tokenizer)
        self.val_batch = self.corpus.validation_batch(config.data.val_sequences).to(self.device)
        self._reference = None
        if before_start is not None:
            before_start(self)
        self.out_dir = prepare_run_dir(Path(out_dir), overwrite)
        (self.out_dir / "config.toml").write_text(tomli_w.dumps(toml_ready(config.to_dict())))
        self._metrics_file = (self.out_dir / "metrics.jsonl").open("w")
        self.steps_done = 0
        self.evaluations = 0
        self.forward_tokens = 0
        self.best_fitness = -math.inf
        self.diverged = False
        self._window: list[float] = []
        self.last_metrics: dict = {}
        self.val_loss_initial = self.validation_loss()
        self.report_initial = self.report()
        # The clock starts once the run is set up (model, task, first report), as the engine's does, and a
        # wall-clock budget counts compute seconds: wall time without measuring (validation, report).
        self.started = time.perf_counter()
        self.measure_seconds = 0.0

    # -- the model and its scores ---------------------------------------------------------------
    @property
    def reference(self):
        """A frozen copy of the initial model: the scorer of the self-feedback reward and report (the task's own
        copy in a task run; otherwise built on first use, so that adam and mezo hold one model)."""
        if self.task is not None:
            return self.task.reference
        if self._reference is None:
            self._reference = initial_model(self.config, self.device)[0].eval()
            self._reference.requires_grad_(False)
        return self._reference

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters whose names match ``genome.params`` (what an evolution run would evolve); the rest are frozen.

        For ``hf:PATH`` the pattern matches the checkpoint's own names, and the default means the default
        subset of an evolution run (:func:`evolm.models.hf.resolved_params`); ``--params .`` trains every tensor."""
        pattern_text = self.config.genome.params
        if is_hf(self.config.model.name):
            pattern_text = resolved_params(self.config, self.model)
        pattern = re.compile(pattern_text)
        chosen = []
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        for name, parameter in unwrap(self.model).named_parameters():
            parameter.requires_grad_(bool(pattern.search(name)))
            if parameter.requires_grad:
                chosen.append(parameter)
        if not chosen:
            raise UsageError(f"config field genome.params: pattern {pattern_text!r} matches no parameter of the model")
        return chosen

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The worker's validation loss: mean cross-entropy of the fixed validation windows."""
        training = self.model.training
        self.model.eval()
        loss = -mean_log_likelihood(self.model, self.val_batch)
        self.model.train(training)
        return loss

    @torch.no_grad()
    def report(self) -> dict:
        """Self-score (mean log-likelihood of the model's own continuations under the run's scorer) and
        distinct-2 of those continuations, on fixed validation prompts with a fixed sampling seed.

        The scorer follows ``fitness.scorer`` as in an evolution run's report: the model judges itself
        (``self``, the default) or the frozen initial model judges (``reference``, and always for
        reinforce, whose reward it is). Only then is the frozen copy built, so adam and mezo hold one model.
        ``evolm compare`` judges every method's final weights itself with the frozen initial model.

        With a task, the task's report instead: held-out reward (greedy), ``kl_from_initial``, distinct-2."""
        if self.task is not None:
            if not weights_finite(self.model):
                return {"reward": math.nan, "kl_from_initial": math.nan, "distinct_2": math.nan}
            training = self.model.training
            self.model.eval()
            figures = self.task.report(self.model)
            self.model.train(training)
            return figures
        if not weights_finite(self.model):
            return {"self_score": math.nan, "distinct_2": math.nan}
        fitness = self.config.fitness
        prompts = self.val_batch.inputs[: fitness.prompts, : min(fitness.prompt_tokens, self.config.model.context)]
        # reinforce's reward is the frozen model's score: its report says how well it optimised that.
        judged_by_reference = fitness.scorer == "reference" or self.method == "reinforce"
        scorer = self.reference if judged_by_reference else self.model
        environment = TokenEnvironment(
            scorer,
            self.corpus,
            len(prompts),
            prompts.shape[1],
            fitness.generate_tokens,
            torch_generator(self.config.seed, "report"),
            self.device,
        )
        generator = torch_generator(self.config.seed, "report-sampling")
        training = self.model.training
        self.model.eval()
        text, rewards = rollout(self.model, environment, fitness.temperature, generator, prompts)
        self.model.train(training)
        return {
            # Summed in step-major order (steps, episodes), the order the logged figures were measured in.
            "self_score": rewards.t().contiguous().mean().item(),
            "distinct_2": distinct_n(text[:, prompts.shape[1] :], 2),
        }

    # -- budget and bookkeeping ---------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def compute_seconds(self) -> float:
        """Wall seconds spent on the method's own work: the budget's clock."""
        return self.elapsed() - self.measure_seconds

    def can_step(self, step_tokens: int) -> bool:
        """Whether another step fits the budget: never past the token budget, at most one step past the time."""
        if self.diverged or (self.steps is not None and self.steps_done >= self.steps):
            return False
        if self.budget_tokens is not None and self.forward_tokens + step_tokens > self.budget_tokens:
            return False
        return self.budget_seconds is None or self.compute_seconds() < self.budget_seconds

    def record(self, fitnesses, forward_tokens: int) -> None:
        """One finished step: its evaluations' fitnesses and the tokens its forward passes took."""
        self._window.extend(float(f) for f in fitnesses)
        self.evaluations += len(fitnesses)
        self.forward_tokens += int(forward_tokens)
        self.steps_done += 1
        # A diverged model (a non-finite weight) ends the run with its scores logged, never a crash.
        if not weights_finite(self.model):
            self.diverged = True
            self.log(f"evolm: {self.method} diverged at step {self.steps_done - 1} (non-finite weights); stopping")

    def maybe_log(self, extra: dict | None = None, force: bool = False) -> bool:
        """Write a metrics line every ``log_every`` steps (and when ``force``, unless this step is logged);
        whether a line was written."""
        if not self._window or (not force and self.steps_done % self.log_every):
            return False
        values = torch.tensor([f if math.isfinite(f) else math.nan for f in self._window], dtype=torch.float64)
        finite = values[~values.isnan()]
        best = finite.max().item() if finite.numel() else -math.inf
        self.best_fitness = max(self.best_fitness, best)
        wall = self.elapsed()
        compute = wall - self.measure_seconds
        figures = {"val_loss": self.validation_loss(), **self.report()}
        self.measure_seconds += self.elapsed() - wall
        metrics = {
            "generation": self.steps_done - 1,
            "wall_seconds": round(wall, 3),
            "compute_seconds": round(compute, 3),
            "evaluations": self.evaluations,
            "forward_tokens": self.forward_tokens,
            "best_fitness": best,
            "mean_fitness": finite.mean().item() if finite.numel() else -math.inf,
            "std_fitness": finite.std(unbiased=False).item() if finite.numel() else 0.0,
            **figures,
            **(extra or {}),
        }
        self._window = []
        self.last_metrics = metrics
        self._metrics_file.write(json.dumps({k: json_number(v) for k, v in metrics.items()}) + "\n")
        self._metrics_file.flush()
        return True

    def finish(self, options: dict, extra: dict | None = None) -> dict:
        """Log the last step if needed, save the weights, write ``summary.json`` and return it."""
        self.maybe_log(extra, force=True)
        self._metrics_file.close()
        save_model_file(self.model, self.out_dir / "model.safetensors")  # streamed: no second copy of the weights
        last = self.last_metrics
        summary = {
            "method": self.method,
            "model": self.config.model.name,
            "parameters": count_parameters(self.model),
            "generations": self.steps_done,
            "evaluations": self.evaluations,
            "forward_tokens": self.forward_tokens,
            "wall_seconds": round(self.elapsed(), 3),
            "compute_seconds": round(self.compute_seconds(), 3),
            "budget_seconds": self.budget_seconds,
            "budget_tokens": self.budget_tokens,
            "val_loss_initial": self.val_loss_initial,
            "val_loss_final": last.get("val_loss", self.val_loss_initial),
            "best_fitness": self.best_fitness,
            "diverged": self.diverged,
            **{f"{k}_initial": v for k, v in self.report_initial.items()},
            **{f"{k}_final": last.get(k, v) for k, v in self.report_initial.items()},
            **self.task_summary(),
            "peak_rss_mb": peak_rss_mb(),
            "options": options,
            "run_dir": str(self.out_dir),
        }
        write_json(self.out_dir / "summary.json", summary)
        self.log(
            f"evolm: {self.method} done in {summary['wall_seconds']:.1f} s, {self.steps_done} steps, "
            f"{self.forward_tokens:,} forward tokens; validation loss {self.val_loss_initial:.3f} -> "
            f"{summary['val_loss_final']:.3f} nats; results in {self.out_dir}"
        )
        return summary

    def task_summary(self) -> dict:
        """summary.json's task fields, as an evolution run's (the task, the final ``kl_from_initial``), with what
        the baseline trained on in place of evolution's fitness, normalisation and decoding, and the corpus it
        read (none without a task)."""
        if self.task is None:
            return {}
        final = {"kl_from_initial": self.last_metrics.get("kl_from_initial", self.report_initial["kl_from_initial"])}
        summary = {**task_summary(self.config, final), "task": self.task.task.name, **self.task_training}
        return {**summary, "corpus": self.corpus.source}  # "task arithmetic": the task's own text

    def announce(self, details: str) -> None:
        budget = ", ".join(
            text
            for text in (
                f"{self.budget_seconds:g} s" if self.budget_seconds else "",
                f"{self.budget_tokens:,} forward tokens" if self.budget_tokens else "",
                f"{self.steps} steps" if self.steps else "",
            )
            if text
        )
        self.log(
            f"evolm: baseline {self.method} on {self.config.model.name} with {count_parameters(self.model):,} parameters, "
            f"corpus {self.corpus.source}, budget {budget} (whichever comes first), {details}, output {self.out_dir}"
        )

    def close(self) -> None:
        if not self._metrics_file.closed:
            self._metrics_file.close()
