"""What the policy-gradient baselines on a task's reward (GRPO, RLOO) share: groups of sampled completions and the loop.

:mod:`evolm.baselines.grpo` (Shao et al. 2024, arXiv 2402.03300) and :mod:`evolm.baselines.rloo`
(Ahmadian et al. 2024, arXiv 2402.14740) differ only in how a group of rewards becomes a loss. What
they share lives here:

1. the step's prompts: the first ``prompts`` of :meth:`TaskRuntime.generation_prompts` (the draws an
   evolution run answers at the same generation), each repeated ``group_size`` times;
2. the completions: sampled by the policy at ``fitness.temperature`` with a CPU generator seeded from
   ``config.seed``, the method and the step (the model's cached ``generate`` on the left-padded prompt
   tokens, as evolution writes), decoded and rewarded by the task (:meth:`TaskRuntime.rewards`);
3. the mask (:func:`completion_mask`): a completion's tokens up to and including the first token of
   its stop string; what follows is padding, neither trained nor penalised;
4. the frozen initial model's per-token log-probabilities (no gradient), for the KL penalty; the
   policy's come from one teacher-forced forward with gradients (:func:`token_log_probs`), both of the
   sampling distribution (logits divided by the temperature, as TRL does);
5. the per-token KL estimate :func:`k3_kl`, Schulman's k3 (http://joschu.net/blog/kl-approx.html), as
   in the GRPO paper's equation 4;
6. forward-token accounting, as the engine counts it: the cached generation, one teacher-forced pass
   per policy update and one for the reference, and the reward's own forwards (the self-feedback
   reward's frozen scorer: :attr:`TaskRuntime.reference_forward_tokens`).

Every metrics line adds, averaged over the steps since the previous line: ``train_reward`` (the
batches' mean task reward, also the logged fitness), ``train_kl`` (mean k3 per completion token, of
the policy before its update), ``completion_tokens`` (mean tokens per completion, stop included) and
``informative_groups`` (the share of prompts whose completions did not all earn the same reward: the
others give no learning signal but the KL's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evolm.baselines.harness import BaselineRun, check_positive
from evolm.errors import UsageError
from evolm.fitness import generation_forward_tokens
from evolm.seeding import derive_seed
from evolm.tasks.fitness import uses_task

# update(policy, optimizer, rollouts) -> figures of the step (e.g. {"train_kl": ...}), averaged per line
Update = Callable[[torch.nn.Module, torch.optim.Optimizer, "Rollouts"], dict]


@dataclass
class Rollouts:
    """One step's groups: ``group_size`` sampled completions of each prompt, their rewards, masks and reference."""

    prompts: list[str]  # the step's prompts, each once
    completions: list[str]  # decoded, cut at the stop; rows of one prompt are adjacent (prompt-major)
    rewards: torch.Tensor  # (prompts, group_size): the task's reward of each completion
    sequence: torch.Tensor  # (rows, prompt_length + width): left-padded prompt, then the completion tokens
    prompt_length: int
    mask: torch.Tensor  # (rows, width) float: 1 on each completion's tokens up to its stop's first token
    reference_log_probs: torch.Tensor  # (rows, width): the frozen initial model's, no gradient
    forward_tokens: int  # the generation, the reference pass and the reward's own forwards
    scored_tokens: int  # one teacher-forced pass over the rows: each policy pass costs this many


def require_task(config, method: str) -> None:
    """GRPO and RLOO train on a task's reward: without a task there is nothing to reward."""
    if not uses_task(config):
        raise UsageError(
            f"baseline {method} trains on a task's reward: set task.name (e.g. arithmetic, python-lines, "
            "self-feedback) or task.reward"
        )


def require_sampling(config, method: str) -> float:
    """The sampling temperature (``fitness.temperature``): a policy gradient needs a stochastic policy."""
    temperature = config.fitness.temperature
    if not temperature > 0:
        raise UsageError(
            f"config field fitness.temperature must be positive for {method} (it samples completions), got {temperature}"
        )
    return float(temperature)


def completion_mask(new_tokens: torch.Tensor, stop_tokens: list[int]) -> torch.Tensor:
    """Which of each row's new tokens belong to its completion (bool, same shape as ``new_tokens``).

    A completion is every token before the first occurrence of the stop string's tokens, plus the
    first of those (writing the stop is the policy's decision to end; what follows it is padding).
    Without a stop (or where it never occurs) every token counts."""
    rows, width = new_tokens.shape
    length = len(stop_tokens)
    if length == 0 or width < length:
        return torch.ones_like(new_tokens, dtype=torch.bool)
    stop = torch.tensor(stop_tokens, dtype=new_tokens.dtype, device=new_tokens.device)
    hits = (new_tokens.unfold(1, length, 1) == stop).all(dim=2)  # (rows, width - length + 1)
    found = hits.any(dim=1)
    first = torch.where(found, hits.float().argmax(dim=1), torch.full_like(found, width, dtype=torch.long))
    return torch.arange(width, device=new_tokens.device).unsqueeze(0) <= first.unsqueeze(1)


def token_log_probs(model, sequence: torch.Tensor, prompt_length: int, temperature: float) -> torch.Tensor:
    """log pi(token | text before it) of every completion token, (rows, completion tokens), in one forward.

    Of the sampling distribution (logits / temperature), so that the log-ratio and the KL compare the
    distributions the completions were drawn from."""
    logits = model(sequence[:, :-1])[:, prompt_length - 1 :]
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.gather(2, sequence[:, prompt_length:].unsqueeze(2)).squeeze(2)


def k3_kl(policy_log_probs: torch.Tensor, reference_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(policy || reference) per sampled token: exp(d) - d - 1 with d = ref - policy.

    Unbiased for tokens drawn from the policy, never negative, 0 where the two agree (GRPO, equation 4)."""
    difference = reference_log_probs - policy_log_probs
    return torch.exp(difference) - difference - 1


def completion_means(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's mean of per-token ``values`` over its own completion tokens: (rows,)."""
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class GroupSampler:
    """Draws a step's prompts, samples ``group_size`` completions of each with the policy, rewards and masks them."""

    def __init__(self, run: BaselineRun, method: str, group_size: int, prompts: int, temperature: float):
        runtime = run.task
        assert runtime is not None  # require_task ran first
        self.runtime = runtime
        self.method = method
        self.group_size = group_size
        self.prompts = prompts
        self.temperature = temperature
        self.run_seed = run.config.seed
        if prompts > run.config.task.batch:
            raise UsageError(
                f"baseline option prompts ({prompts}) exceeds task.batch ({run.config.task.batch}), "
                "the training prompts drawn per step"
            )
        tokenizer = runtime.tokenizer
        context = runtime.context_length
        longest = max(len(tokenizer.encode(prompt)) for prompt in runtime.task.train_prompts)
        # encode() left-pads a batch to its longest prompt, cut to the context.
        self.longest_prompt = min(longest, context) if context is not None else longest
        if context is not None and self.longest_prompt + runtime.new_tokens - 1 > context:
            raise UsageError(
                f"task {runtime.task.name}: prompts of up to {self.longest_prompt} tokens + task.new_tokens "
                f"({runtime.new_tokens}) - 1 exceed model.context ({context}); raise model.context or lower task.new_tokens"
            )
        stop = runtime.task.stop
        self.stop_tokens = [int(t) for t in tokenizer.encode(stop)] if stop else []

    def step_tokens_bound(self, policy_passes: int) -> int:
        """The most forward tokens one step can take (longest prompts, full-length completions): the budget check."""
        runtime = self.runtime
        rows = self.prompts * self.group_size
        length = self.longest_prompt + runtime.new_tokens - 1
        total = generation_forward_tokens(self.longest_prompt, runtime.new_tokens, runtime.context_length) * rows
        total += (policy_passes + 1) * rows * length
        if runtime.task.name == "self-feedback":
            total += rows * length  # the frozen scorer reads every completion
        return total

    @torch.no_grad()
    def sample(self, policy, step: int) -> Rollouts | None:
        """The groups of one step, or None when the policy has diverged (non-finite logits)."""
        runtime = self.runtime
        prompts = runtime.generation_prompts(step)[: self.prompts]
        prompt_tokens = runtime.encode(prompts).repeat_interleave(self.group_size, dim=0)
        prompt_length = prompt_tokens.shape[1]
        seed = derive_seed(self.run_seed, self.method, "sampling", step)
        new = runtime.write(policy, prompt_tokens, seed, temperature=self.temperature)
        if new is None:
            return None
        row_prompts = [prompt for prompt in prompts for _ in range(self.group_size)]
        completions = runtime.decode(new)
        scorer_tokens = runtime.reference_forward_tokens
        rewards = runtime.rewards(row_prompts, completions)
        scorer_tokens = runtime.reference_forward_tokens - scorer_tokens
        mask = completion_mask(new, self.stop_tokens)
        # Tokens after every row's stop train nothing: the teacher-forced passes stop at the longest completion.
        width = int(mask.sum(dim=1).max())
        sequence = torch.cat([prompt_tokens, new[:, :width]], dim=1)
        reference_log_probs = token_log_probs(runtime.reference, sequence, prompt_length, self.temperature)
        rows = len(row_prompts)
        scored_tokens = rows * (prompt_length + width - 1)
        generation_tokens = rows * generation_forward_tokens(prompt_length, runtime.new_tokens, runtime.context_length)
        return Rollouts(
            prompts=prompts,
            completions=completions,
            rewards=torch.tensor(rewards, dtype=torch.float32, device=prompt_tokens.device).reshape(
                len(prompts), self.group_size
            ),
            sequence=sequence,
            prompt_length=prompt_length,
            mask=mask[:, :width].float(),
            reference_log_probs=reference_log_probs,
            forward_tokens=generation_tokens + scored_tokens + scorer_tokens,
            scored_tokens=scored_tokens,
        )


def train_on_groups(
    method: str,
    config,
    out_dir,
    budget_seconds,
    budget_tokens,
    log,
    *,
    learning_rate: float,
    group_size: int,
    prompts: int,
    steps: int | None,
    log_every: int,
    overwrite: bool,
    options: dict,
    normalise: str,
    policy_passes: int,
    describe: str,
    update: Update,
) -> dict:
    """The loop GRPO and RLOO share: sample groups, ``update`` the policy with Adam, record, log, finish.

    ``policy_passes``: the policy's teacher-forced passes per step (GRPO's ``iterations``);
    ``normalise``: how the method turns a group's rewards into advantages (summary.json's task_normalise)."""
    require_task(config, method)
    temperature = require_sampling(config, method)
    check_positive("learning_rate", learning_rate)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise UsageError(f"baseline option group_size must be an integer of at least 2, got {group_size!r}")
    if isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1:
        raise UsageError(f"baseline option prompts must be a positive integer, got {prompts!r}")
    samplers: list[GroupSampler] = []

    def check(run: BaselineRun) -> None:
        samplers.append(GroupSampler(run, method, group_size, prompts, temperature))

    run = BaselineRun(method, config, out_dir, budget_seconds, budget_tokens, steps, log_every, overwrite, log, check)
    try:
        sampler = samplers[0]
        run.task_training = {"task_fitness": "reward", "task_normalise": normalise, "task_decoding": "sample"}
        policy = run.model.eval()  # no dropout: sampling and the gradient pass must see the same distribution
        optimizer = torch.optim.Adam(run.trainable_parameters(), lr=learning_rate)
        step_tokens = sampler.step_tokens_bound(policy_passes)
        run.announce(
            f"{describe}, lr {learning_rate:g}, {prompts} prompts x {group_size} completions per step "
            f"at temperature {temperature:g}, task {sampler.runtime.task.name}"
        )
        window: list[dict] = []
        while run.can_step(step_tokens):
            rollouts = sampler.sample(policy, run.steps_done)
            if rollouts is None:
                run.diverged = True
                log(f"evolm: {method} diverged at step {run.steps_done} (non-finite logits); stopping")
                break
            figures = update(policy, optimizer, rollouts)
            train_reward = rollouts.rewards.mean().item()
            window.append(
                {
                    "train_reward": train_reward,
                    "completion_tokens": rollouts.mask.sum(dim=1).mean().item(),
                    "informative_groups": (rollouts.rewards.std(dim=1) > 0).float().mean().item(),
                    **figures,
                }
            )
            run.record([train_reward], rollouts.forward_tokens + policy_passes * rollouts.scored_tokens)
            if run.maybe_log(window_means(window)):
                window = []
        return run.finish(options, window_means(window) if window else None)
    finally:
        run.close()


def window_means(window: list[dict]) -> dict:
    """Each figure's mean over the steps since the last metrics line."""
    return {key: sum(step[key] for step in window) / len(window) for key in window[0]}


def check_beta(beta) -> None:
    """The KL coefficient of GRPO and RLOO: a number >= 0 (0 turns the penalty off), or one line."""
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0:
        raise UsageError(f"baseline option beta must be a number >= 0, got {beta!r}")
