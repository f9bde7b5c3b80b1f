"""Gradient baselines beside evolution: ``adam``, ``reinforce`` and ``mezo``, on the same budget and run folder.

Each baseline is one readable file (CleanRL style) with one signature::

    run_X(config, out_dir, budget_seconds=None, budget_tokens=None, log=print, **options) -> summary dict

It starts from the same initial weights as an evolution run (``build_model(config.model, config.seed)``),
draws every random number from generators derived from ``config.seed``, stops at whichever budget
comes first (wall seconds, or forward tokens: tokens put through forward passes, validation and
reports excluded, as in the engine), and writes the files of an evolution run: ``config.toml``,
``metrics.jsonl``, ``summary.json`` and ``model.safetensors``.

The run-folder plumbing the three share (:class:`BaselineRun`) lives here, above the registry at the
bottom of this file, so each baseline file holds only its own algorithm.

What a logged line means for a baseline: one *evaluation* is one model scored on one batch (adam:
a training step; mezo: each of the two perturbed forwards; reinforce: one batch of episodes), its
*fitness* is higher-is-better (adam and mezo: the batch's mean log-likelihood; reinforce: the
batch's self-score), and ``best/mean/std_fitness`` summarise the evaluations since the previous line.
Every line also carries ``val_loss`` (the worker's fixed validation windows) and, from
:meth:`BaselineRun.report`, ``self_score`` (mean log-likelihood of the model's own continuations of
fixed validation prompts under ``fitness.scorer``: the model itself, or the frozen initial model) and
``distinct_2`` of those continuations;
``summary.json`` has them as ``*_initial`` / ``*_final``, plus ``peak_rss_mb`` and the options used.
"""

from __future__ import annotations

import json
import math
import re
import resource
import sys
import time
from pathlib import Path

import tomli_w
import torch
import torch.nn.functional as F

from evolm.data import Corpus
from evolm.engine import json_number, prepare_run_dir, save_model_file, toml_ready, write_json
from evolm.errors import UsageError
from evolm.models import build_model, count_parameters, resolve_device
from evolm.models.base import sample_next
from evolm.seeding import torch_generator
from evolm.textstats import distinct_n


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, from the operating system."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


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


class TokenEnvironment:
    """The seed document's token-level environment, Gymnasium-style and batched over episodes.

    An observation is the text so far (``(episodes, time)`` token ids); an action is one next token
    per episode; the reward is the *scorer*'s log-probability of that token given the text so far.
    The return of an episode divided by its length is therefore exactly the self-feedback fitness:
    the mean log-likelihood of the generation under the scorer. (Log-probability rather than
    probability, so that the return is that fitness and not a sum of probabilities.)

    The scorer runs incrementally (one cached step per action), so each reward costs one token's
    forward pass. ``reset`` draws fresh prompts from the training text, or takes
    ``options={"prompts": tensor}``.
    """

    def __init__(
        self,
        scorer,
        corpus: Corpus,
        episodes: int,
        prompt_tokens: int,
        generate_tokens: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ):
        self.scorer = scorer
        self.corpus = corpus
        self.episodes = episodes
        self.prompt_tokens = prompt_tokens
        self.generate_tokens = generate_tokens
        self.generator = generator
        self.device = device
        self.forward_tokens = 0  # tokens the scorer has put through forward passes

    def _prompts(self) -> torch.Tensor:
        train = self.corpus.train
        starts = torch.randint(0, len(train) - self.prompt_tokens, (self.episodes,), generator=self.generator)
        return train[starts.unsqueeze(1) + torch.arange(self.prompt_tokens)].to(self.device)

    @torch.no_grad()
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start a batch of episodes: returns ``(observation, info)``."""
        if seed is not None:
            self.generator.manual_seed(seed)
        prompts = (options or {}).get("prompts")
        self.text = self._prompts() if prompts is None else prompts.to(self.device)
        logits, self._state = self.scorer.prefill(self.text)
        self._log_probs = F.log_softmax(logits.float(), dim=-1)
        self.forward_tokens += self.text.numel()
        self.elapsed = 0
        return self.text, {}

    @torch.no_grad()
    def step(self, action: torch.Tensor):
        """``action``: one token per episode. Returns ``(observation, reward, terminated, truncated, info)``."""
        action = action.reshape(-1, 1).to(self.device)
        reward = self._log_probs.gather(1, action).squeeze(1)
        self.text = torch.cat([self.text, action], dim=1)
        self.elapsed += 1
        truncated = self.elapsed >= self.generate_tokens  # episodes end at a fixed length, never early
        if not truncated:
            logits, self._state = self.scorer.step(action, self._state)
            self._log_probs = F.log_softmax(logits.float(), dim=-1)
            self.forward_tokens += action.numel()
        return self.text, reward, False, truncated, {}


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
    ):
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
        self.corpus = Corpus.load(config.data.path or None, config.model.context, config.data.val_fraction)
        self.model = build_model(config.model, config.seed).to(self.device)
        self.val_batch = self.corpus.validation_batch(config.data.val_sequences).to(self.device)
        self._reference = None
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

    # -- the model and its scores ---------------------------------------------------------------
    @property
    def reference(self):
        """A frozen copy of the initial model: the scorer of the self-feedback reward and report."""
        if self._reference is None:
            self._reference = build_model(self.config.model, self.config.seed).to(self.device).eval()
            self._reference.requires_grad_(False)
        return self._reference

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters whose names match ``genome.params`` (what an evolution run would evolve); the rest are frozen."""
        pattern = re.compile(self.config.genome.params)
        chosen = []
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(bool(pattern.search(name)))
            if parameter.requires_grad:
                chosen.append(parameter)
        if not chosen:
            raise UsageError(
                f"config field genome.params: pattern {self.config.genome.params!r} matches no parameter of the model"
            )
        return chosen

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The worker's validation loss: mean cross-entropy of the fixed validation windows."""
        training = self.model.training
        self.model.eval()
        logits = self.model(self.val_batch.inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), self.val_batch.targets.reshape(-1)).item()
        self.model.train(training)
        return loss

    @torch.no_grad()
    def report(self) -> dict:
        """Self-score (mean log-likelihood of the model's own continuations under the run's scorer) and
        distinct-2 of those continuations, on fixed validation prompts with a fixed sampling seed.

        The scorer follows ``fitness.scorer`` as in an evolution run's report: the model judges itself
        (``self``, the default) or the frozen initial model judges (``reference``, and always for
        reinforce, whose reward it is). Only then is the frozen copy built, so adam and mezo hold one model.
        ``evolm compare`` judges every method's final weights itself with the frozen initial model."""
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
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
        observation, _ = environment.reset(options={"prompts": prompts})
        logits, state = self.model.prefill(observation)
        rewards, actions, truncated = [], [], False
        while not truncated:
            action = sample_tokens(logits, fitness.temperature, generator)
            observation, reward, _, truncated, _ = environment.step(action)
            rewards.append(reward)
            actions.append(action)
            if not truncated:
                logits, state = self.model.step(action.unsqueeze(1), state)
        self.model.train(training)
        return {
            "self_score": torch.stack(rewards).mean().item(),
            "distinct_2": distinct_n(torch.stack(actions, dim=1), 2),
        }

    # -- budget and bookkeeping ---------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def can_step(self, step_tokens: int) -> bool:
        """Whether another step fits the budget: never past the token budget, at most one step past the time."""
        if self.diverged or (self.steps is not None and self.steps_done >= self.steps):
            return False
        if self.budget_tokens is not None and self.forward_tokens + step_tokens > self.budget_tokens:
            return False
        return self.budget_seconds is None or self.elapsed() < self.budget_seconds

    def record(self, fitnesses, forward_tokens: int) -> None:
        """One finished step: its evaluations' fitnesses and the tokens its forward passes took."""
        self._window.extend(float(f) for f in fitnesses)
        self.evaluations += len(fitnesses)
        self.forward_tokens += int(forward_tokens)
        self.steps_done += 1
        # A diverged model (a non-finite weight) ends the run with its scores logged, never a crash.
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.diverged = True
            self.log(f"evolm: {self.method} diverged at step {self.steps_done - 1} (non-finite weights); stopping")

    def maybe_log(self, extra: dict | None = None, force: bool = False) -> None:
        """Write a metrics line every ``log_every`` steps (and when ``force``, unless this step is logged)."""
        if not self._window or (not force and self.steps_done % self.log_every):
            return
        values = torch.tensor([f if math.isfinite(f) else math.nan for f in self._window], dtype=torch.float64)
        finite = values[~values.isnan()]
        best = finite.max().item() if finite.numel() else -math.inf
        self.best_fitness = max(self.best_fitness, best)
        metrics = {
            "generation": self.steps_done - 1,
            "wall_seconds": round(self.elapsed(), 3),
            "evaluations": self.evaluations,
            "forward_tokens": self.forward_tokens,
            "best_fitness": best,
            "mean_fitness": finite.mean().item() if finite.numel() else -math.inf,
            "std_fitness": finite.std(unbiased=False).item() if finite.numel() else 0.0,
            "val_loss": self.validation_loss(),
            **self.report(),
            **(extra or {}),
        }
        self._window = []
        self.last_metrics = metrics
        self._metrics_file.write(json.dumps({k: json_number(v) for k, v in metrics.items()}) + "\n")
        self._metrics_file.flush()

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
            "budget_seconds": self.budget_seconds,
            "budget_tokens": self.budget_tokens,
            "val_loss_initial": self.val_loss_initial,
            "val_loss_final": last.get("val_loss", self.val_loss_initial),
            "best_fitness": self.best_fitness,
            "diverged": self.diverged,
            **{f"{k}_initial": v for k, v in self.report_initial.items()},
            **{f"{k}_final": last.get(k, v) for k, v in self.report_initial.items()},
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


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row (shape ``(rows,)``), drawn on the CPU generator: the same draws on CPU and GPU."""
    return sample_next(logits, temperature, generator).squeeze(1)


# The registry imports the baseline files last: they import BaselineRun from this module.
from evolm.baselines.adam import run_adam  # noqa: E402
from evolm.baselines.mezo import run_mezo  # noqa: E402
from evolm.baselines.reinforce import run_reinforce  # noqa: E402

BASELINES = {"adam": run_adam, "reinforce": run_reinforce, "mezo": run_mezo}

__all__ = [
    "BASELINES",
    "BaselineRun",
    "TokenEnvironment",
    "distinct_n",
    "run_adam",
    "run_mezo",
    "run_reinforce",
    "sample_tokens",
]
