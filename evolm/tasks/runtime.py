"""The model side of a task: prompts to tokens, completions, rewards, the dense fitness and the task report.

Evolution (:mod:`evolm.tasks.fitness`) and the policy-gradient baselines (``grpo``, ``rloo``) share
this one runtime, so every method writes, is rewarded and is judged the same way:

- prompts are encoded with the run's tokenizer and left-padded with newlines to one length, so a
  batch of prompts ends at the same position and every completion starts right after its prompt;
- a completion is the model's greedy (``task.decoding = "greedy"``, as in Qiu et al. 2025) or seeded
  sampled continuation, cut at the task's stop string;
- the frozen initial model (a deep copy taken before any update) scores completions for the
  self-feedback reward and anchors the drift: ``kl_from_initial`` is the mean over positions of held-out
  corpus text of KL(current || initial) between next-token distributions, in nats (off-task drift,
  the figure Hoy et al. 2026, arXiv 2604.01499, compare ES and GRPO on);
- the report (logged every generation, ``*_initial`` / ``*_final`` in summary.json) is the held-out
  reward with greedy decoding, the KL drift and distinct-2 of the held-out completions.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evolm.data import Corpus, load_corpus_text
from evolm.fitness import generation_forward_tokens
from evolm.models.base import model_context
from evolm.seeding import derive_seed, numpy_generator
from evolm.tasks import make_task
from evolm.tasks.base import Task, check_rewards
from evolm.textstats import distinct_n

PAD_TEXT = "\n"  # left padding: a byte-level model has seen text start after newlines
OWN_TEXT_TASKS = ("arithmetic", "python-lines")  # tasks that bring their own training text


def configured_corpus_text(config) -> str:
    """The corpus a task's model reads when the task brings none: ``data.path``, or the embedded default."""
    return load_corpus_text(config.data.path or None)


class TaskRuntime:
    """One task bound to one model family: what a worker or a baseline needs to write, reward and report.

    ``model`` is the initial model (before any update): its frozen copy is the reference scorer.
    ``reward_function``: a user's callable given through the Python API (instead of ``task.reward``).
    """

    def __init__(self, config, model: nn.Module, tokenizer, device, reward_function=None):
        self.settings = config.task
        self.run_seed = config.seed
        self.temperature = config.fitness.temperature if self.settings.decoding == "sample" else 0.0
        self.tokenizer = tokenizer
        self.device = device
        self.context_length = model_context(model)
        self.reference: nn.Module = copy.deepcopy(model).eval().requires_grad_(False)
        # Tasks that generate their own text (arithmetic, python-lines) never read the configured corpus.
        self._configured_text = "" if config.task.name in OWN_TEXT_TASKS else configured_corpus_text(config)
        self._config = config
        self.task: Task = make_task(self.settings, self._configured_text, self.score_with_reference, reward_function)
        self.new_tokens = self.settings.new_tokens or self.task.new_tokens
        pad = tokenizer.encode(PAD_TEXT)
        self.pad_token = int(pad[0]) if len(pad) else 0
        heldout = self.task.heldout_prompts
        self.heldout_prompts = heldout[: self.settings.heldout] if self.settings.heldout else heldout
        self.corpus: Corpus | None = None  # made by load_corpus (evolm.assembly, the baselines)
        # Call the reward once now, while nothing is written: a reward that raises, returns the wrong
        # number of values or NaN is one line before any run folder is touched.
        self.reference_forward_tokens = 0  # the self-feedback scorer's tokens
        self.rewards(self.heldout_prompts[:2], [""] * len(self.heldout_prompts[:2]))
        self.reference_forward_tokens = 0  # that check is not the method's work

    @property
    def corpus_text(self) -> str:
        """The text the model reads (validation loss, KL drift, ``evolm train``): the task's own, or the configured corpus."""
        if self.task.corpus_text is not None:
            return self.task.corpus_text
        return self._configured_text or configured_corpus_text(self._config)

    def load_corpus(self) -> Corpus:
        """The run's corpus: :attr:`corpus_text` tokenized and split; kept for the KL drift."""
        source = self._config.data.path or "embedded"
        if self.task.corpus_text is not None:
            source = f"task {self.task.name}"
        self.corpus = Corpus(
            self.tokenizer.encode(self.corpus_text), self._config.model.context, self._config.data.val_fraction, source
        )
        return self.corpus

    # -- tokens -----------------------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts as one (rows, length) tensor on the device, left-padded with newlines."""
        rows = [self.tokenizer.encode(prompt).tolist() for prompt in prompts]
        length = max(1, max(len(row) for row in rows))
        if self.context_length is not None:
            length = min(length, self.context_length)
        padded = [([self.pad_token] * (length - len(row)) + row)[-length:] for row in rows]
        return torch.tensor(padded, dtype=torch.long, device=self.device)

    def decode(self, new_tokens: torch.Tensor) -> list[str]:
        """Each row's completion text, cut before the task's stop string."""
        texts = [self.tokenizer.decode(row) for row in new_tokens.tolist()]
        stop = self.task.stop
        return [text.split(stop, 1)[0] for text in texts] if stop else texts

    # -- writing and rewarding --------------------------------------------------------------------
    @torch.no_grad()
    def write(self, model: Any, prompt_tokens: torch.Tensor, seed: int, temperature: float | None = None):
        """New tokens (rows, new_tokens) the model writes after the prompts, or None for a diverged model."""
        temperature = self.temperature if temperature is None else temperature
        generator = torch.Generator().manual_seed(seed)
        try:
            new = model.generate(prompt_tokens, self.new_tokens, temperature, generator)
        except RuntimeError:
            # Sampling from NaN probabilities raises; a model with finite logits has a real error.
            if torch.isfinite(model(prompt_tokens)).all():
                raise
            return None
        if not torch.isfinite(model(prompt_tokens[:1])).all():
            return None  # greedy decoding of NaN logits does not raise: check the model itself
        return new

    def rewards(self, prompts: list[str], completions: list[str], partial: bool = False) -> list[float]:
        """The task's reward (or its partial-credit reward) of each pair, checked: finite, one per pair."""
        function = self.task.partial if partial and self.task.partial is not None else self.task.reward
        return check_rewards(function(prompts, completions), len(prompts), self.task.name)

    def write_tokens(self, prompt_tokens: torch.Tensor) -> int:
        """Forward tokens of writing one completion per row of the encoded prompts (the prefill, one per
        step, cache rebuilds): counted on the batch as padded, as the baselines count theirs."""
        rows, length = prompt_tokens.shape
        return generation_forward_tokens(length, self.new_tokens, self.context_length) * rows

    # -- log-likelihoods ---------------------------------------------------------------------------
    def _scored_sequences(self, prompts: list[str], completions: list[str]):
        """Left-padded prompt + right-padded completion rows, and the mask of completion targets."""
        prompt_tokens = self.encode(prompts)
        encoded = [self.tokenizer.encode(c).tolist() for c in completions]
        width = max(1, max(len(c) for c in encoded))
        rows = [c + [self.pad_token] * (width - len(c)) for c in encoded]
        completion = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = torch.tensor([[i < len(c) for i in range(width)] for c in encoded], device=self.device)
        sequence = torch.cat([prompt_tokens, completion], dim=1)
        targets = torch.cat([torch.zeros_like(prompt_tokens, dtype=torch.bool), mask], dim=1)
        if self.context_length is not None and sequence.shape[1] - 1 > self.context_length:
            sequence = sequence[:, -(self.context_length + 1) :]
            targets = targets[:, -(self.context_length + 1) :]
        return sequence, targets[:, 1:]

    @torch.no_grad()
    def completion_log_likelihoods(self, model: nn.Module, prompts: list[str], completions: list[str]) -> list[float]:
        """Mean log-likelihood per token of each completion after its prompt under ``model`` (one forward).

        An empty completion has no tokens to score: it gets -ln(vocabulary), a uniform model's value,
        so that writing nothing never looks like the most likely text."""
        sequence, targets = self._scored_sequences(prompts, completions)
        log_probs = F.log_softmax(model(sequence[:, :-1]).float(), dim=-1)
        token_log_probs = log_probs.gather(2, sequence[:, 1:].unsqueeze(2)).squeeze(2)
        counts = targets.sum(dim=1)
        sums = (token_log_probs * targets).sum(dim=1)
        floor = -math.log(log_probs.shape[-1])
        values = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, floor))
        return values.tolist()

    def score_with_reference(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The frozen initial model's mean log-likelihood per token of each completion (self-feedback's scorer)."""
        self.reference_forward_tokens += self.scored_tokens(self.encode(prompts))
        return self.completion_log_likelihoods(self.reference, prompts, completions)

    def scored_tokens(self, prompt_tokens: torch.Tensor, completion_tokens: int | None = None) -> int:
        """Forward tokens of one teacher-forced pass over prompt + completion per row of the encoded prompts."""
        rows, length = prompt_tokens.shape
        length += (self.new_tokens if completion_tokens is None else completion_tokens) - 1
        return rows * (min(length, self.context_length) if self.context_length else length)

    def answer_completions(self, prompts: list[str]) -> list[str]:
        """Each prompt's correct completion followed by the stop string (the ``logprob`` fitness scores it)."""
        assert self.task.answers is not None
        return [answer + (self.task.stop or "") for answer in self.task.answers(prompts)]

    # -- the generation's prompts and the report ----------------------------------------------------
    def generation_prompts(self, generation: int) -> list[str]:
        """``task.batch`` training prompts drawn for one generation: every individual answers the same ones."""
        generator = numpy_generator(self.run_seed, "task-prompts", generation)
        pool = self.task.train_prompts
        picks = generator.choice(len(pool), size=min(self.settings.batch, len(pool)), replace=False)
        return [pool[i] for i in picks]

    @torch.no_grad()
    def heldout_reward(self, model: nn.Module) -> tuple[float, list[str]]:
        """Mean reward of greedy completions of the held-out prompts (0-temperature: no sampling noise)."""
        prompts = self.heldout_prompts
        completions: list[str] = []
        for start in range(0, len(prompts), 512):  # bounded memory for long held-out lists
            chunk = prompts[start : start + 512]
            new = self.write(model, self.encode(chunk), derive_seed(self.run_seed, "task-report"), temperature=0.0)
            if new is None:
                return math.nan, []
            completions.extend(self.decode(new))
        return float(np.mean(self.rewards(prompts, completions))), completions

    @torch.no_grad()
    def kl_from_initial(self, model: nn.Module) -> float:
        """Mean KL(current || initial) per position of held-out corpus text, in nats (0 at the start)."""
        if self.corpus is None:
            return math.nan
        batch = self.corpus.validation_batch(self.settings.kl_sequences).to(self.device)
        current = F.log_softmax(model(batch.inputs).float(), dim=-1)
        initial = F.log_softmax(self.reference(batch.inputs).float(), dim=-1)
        return (current.exp() * (current - initial)).sum(dim=-1).mean().item()

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict:
        """``reward`` (held-out, greedy), ``kl_from_initial`` and ``distinct_2`` of the held-out completions."""
        reward, completions = self.heldout_reward(model)
        encoded = [self.tokenizer.encode(c).tolist() for c in completions]
        return {
            "reward": reward,
            "kl_from_initial": self.kl_from_initial(model),
            "distinct_2": distinct_n(encoded, 2) if encoded else math.nan,
        }
