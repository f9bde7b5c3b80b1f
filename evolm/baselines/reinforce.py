"""The seed document's policy-gradient loop: REINFORCE with a baseline on the self-feedback objective.

Williams 1992, "Simple statistical gradient-following algorithms for connectionist reinforcement
learning" (Machine Learning 8:229-256); the per-step baseline as in Sutton & Barto, "Reinforcement
Learning: An Introduction" (2nd ed., 2018), section 13.4.

The policy is the model being trained; the environment
(:class:`evolm.baselines.environment.TokenEnvironment`) rewards each chosen token with its
log-probability under the reference, a frozen copy of the initial model. An episode's mean reward
is the self-feedback fitness an evolution run with ``fitness.scorer = "reference"`` maximises: the
mean log-likelihood of the model's own generation under the scorer. One step:

1. reset: ``episodes`` prompts of ``prompt_tokens`` drawn from the training text (a derived generator);
2. roll out ``generate_tokens`` actions per episode, sampled at ``fitness.temperature`` with the
   policy's cached generation (no gradients), the environment scoring each one;
3. one teacher-forced forward of the policy over the episodes gives log pi(a_t | s_t) with gradients;
4. loss = -mean_episodes( sum_t (G_t - b_t) * log pi(a_t | s_t) ) / generate_tokens, with G_t the
   reward-to-go (undiscounted) and b_t its mean over the batch of episodes at step t; Adam step.

Forward tokens per step: the policy's rollout, the scorer's rewards and the teacher-forced pass,
each ``episodes * (prompt_tokens + generate_tokens - 1)``. Validation loss is logged too; this
objective does not train the model on real text, so it is not expected to fall.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evolm.baselines.environment import TokenEnvironment, rollout
from evolm.baselines.harness import BaselineRun, check_episode_fits, check_positive
from evolm.errors import UsageError
from evolm.seeding import torch_generator


def rewards_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """G_t = r_t + r_{t+1} + ... for rewards of shape (episodes, time)."""
    return rewards.flip(1).cumsum(1).flip(1)


def run_reinforce(
    config,
    out_dir,
    budget_seconds=None,
    budget_tokens=None,
    log=print,
    *,
    learning_rate: float = 1e-3,
    episodes: int = 32,
    prompt_tokens: int | None = None,
    generate_tokens: int | None = None,
    steps: int | None = None,
    log_every: int = 10,
    overwrite: bool = False,
) -> dict:
    """REINFORCE until the first of ``budget_seconds``, ``budget_tokens`` or ``steps`` runs out.

    ``prompt_tokens`` and ``generate_tokens`` default to the fitness section's; ``episodes`` run in
    one batch per step. Returns the summary also written to ``summary.json``.
    """
    prompt_tokens = prompt_tokens or config.fitness.prompt_tokens
    generate_tokens = generate_tokens or config.fitness.generate_tokens
    temperature = config.fitness.temperature
    check_positive("learning_rate", learning_rate)
    check_positive("episodes", episodes)
    if not temperature > 0:
        raise UsageError(
            f"config field fitness.temperature must be positive for reinforce (a stochastic policy), got {temperature}"
        )
    check_episode_fits(config, prompt_tokens, generate_tokens)
    options = {
        "learning_rate": learning_rate,
        "episodes": episodes,
        "prompt_tokens": prompt_tokens,
        "generate_tokens": generate_tokens,
        "temperature": temperature,
        "log_every": log_every,
    }
    run = BaselineRun("reinforce", config, out_dir, budget_seconds, budget_tokens, steps, log_every, overwrite, log)
    try:
        policy = run.model.eval()  # sampling and the gradient pass must see the same distribution
        optimizer = torch.optim.Adam(run.trainable_parameters(), lr=learning_rate)
        environment = TokenEnvironment(
            run.reference,
            run.corpus,
            episodes,
            prompt_tokens,
            generate_tokens,
            torch_generator(config.seed, "reinforce", "prompts"),
            run.device,
        )
        sampling = torch_generator(config.seed, "reinforce", "sampling")
        episode_tokens = episodes * (prompt_tokens + generate_tokens - 1)
        step_tokens = 3 * episode_tokens
        run.announce(
            f"REINFORCE lr {learning_rate:g}, {episodes} episodes of "
            f"{prompt_tokens} prompt + {generate_tokens} generated tokens, scorer: the frozen initial model"
        )
        while run.can_step(step_tokens):
            # 1-2. Roll out a batch of episodes; the environment rewards every token.
            observation, rewards = rollout(policy, environment, temperature, sampling)  # rewards: (episodes, steps)
            actions = observation[:, prompt_tokens:]
            # 3. log pi(a_t | s_t) of the same actions, with gradients, in one forward pass.
            logits = policy(observation[:, :-1])[:, prompt_tokens - 1 :]
            log_probs = F.log_softmax(logits.float() / temperature, dim=-1).gather(2, actions.unsqueeze(2)).squeeze(2)
            # 4. REINFORCE with the batch-mean baseline per step.
            returns = rewards_to_go(rewards)
            advantages = returns - returns.mean(dim=0, keepdim=True)
            loss = -(advantages * log_probs).sum(dim=1).mean() / generate_tokens
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.record([rewards.mean().item()], step_tokens)
            run.maybe_log()
        return run.finish(options)
    finally:
        run.close()
