"""The seed document's token-level environment for reinforcement learning on the self-feedback objective.

Gymnasium-style (``reset`` / ``step``), batched over episodes: an observation is the text so far, an
action one next token per episode, the reward the scorer's log-probability of that token.
:mod:`evolm.baselines.reinforce` trains against it, and :class:`evolm.baselines.harness.BaselineRun`
reports every baseline's self-score with it. :func:`sample_tokens` draws the actions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evolm.data import Corpus
from evolm.models.base import NonFiniteLogits, sample_next


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


def sample_tokens(
    logits: torch.Tensor, temperature: float, generator: torch.Generator, invalid: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row (shape ``(rows,)``), drawn on the CPU generator: the same draws on CPU and GPU.
    ``invalid``: a device flag set on NaN probabilities, read by the caller once (see :func:`sample_next`)."""
    return sample_next(logits, temperature, generator, invalid).squeeze(1)


@torch.no_grad()
def rollout(policy, environment: TokenEnvironment, temperature: float, generator: torch.Generator, prompts=None):
    """One batch of episodes: the policy writes with its cached generation, the environment rewards each token.

    Returns ``(text, rewards)``: the prompts followed by the actions ``(episodes, prompt + generate_tokens)``,
    and the rewards ``(episodes, generate_tokens)``. ``prompts`` default to fresh ones from the training text.
    """
    observation, _ = environment.reset(options=None if prompts is None else {"prompts": prompts})
    logits, state = policy.prefill(observation)
    rewards, truncated = [], False
    # NaN probabilities are flagged on the device and read once after the last token, not once per token.
    invalid = torch.zeros((), dtype=torch.bool, device=logits.device) if temperature > 0 else None
    while not truncated:
        action = sample_tokens(logits, temperature, generator, invalid)
        observation, reward, _, truncated, _ = environment.step(action)
        rewards.append(reward)
        if not truncated:
            logits, state = policy.step(action.unsqueeze(1), state)
    if invalid is not None and bool(invalid):
        raise NonFiniteLogits("probability tensor contains NaN: the policy's logits were not finite while it wrote")
    return observation, torch.stack(rewards, dim=1)
