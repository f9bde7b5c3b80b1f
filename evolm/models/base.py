"""What every evolm language model offers, and the one incremental sampling loop they share.

A model maps token ids ``(batch, time)`` to logits ``(batch, time, vocab)``. For generation it
also offers ``prefill(prompt) -> (last_logits, state)`` and ``step(tokens, state) -> (logits, state)``,
so n new tokens cost n single-token steps (a key/value cache or a recurrent state), never n
re-encodings of the whole text.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sample_next(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row. Sampling runs on the CPU generator so CPU and GPU runs draw the same tokens."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


class LanguageModel(nn.Module):
    """Base class: subclasses implement ``forward``, ``prefill`` and ``step``."""

    def prefill(self, prompt: torch.Tensor):  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state):  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuation tokens for each prompt row; returns only the new tokens."""
        if prompt.dim() == 1:
            prompt = prompt.unsqueeze(0)
        if max_new_tokens <= 0:
            return prompt.new_empty((prompt.shape[0], 0))
        logits, state = self.prefill(prompt)
        new_tokens = []
        for index in range(max_new_tokens):
            token = sample_next(logits, temperature, generator)
            new_tokens.append(token)
            if index + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        return torch.cat(new_tokens, dim=1)
