"""What every evolm language model offers, and the one incremental sampling loop they share.

A model maps token ids ``(batch, time)`` to logits ``(batch, time, vocab)``. For generation it
also offers ``prefill(prompt) -> (last_logits, state)`` and ``step(tokens, state) -> (logits, state)``,
so n new tokens cost n single-token steps (a key/value cache or a recurrent state), never n
re-encodings of the whole text.

The sampling loop stays on the model's device: tokens are drawn there (``torch.multinomial`` with
a generator on that device; for one sample it is an exponential race and an argmax, no host
synchronisation) and written into a preallocated tensor, so a GPU never waits for the host per
token. On a CPU the tokens are those of the host generator passed in.
"""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_context(model: nn.Module) -> int | None:
    """Longest sequence the model's forward takes (the GPT's learned positions), None when unbounded (LSTM)."""
    return getattr(getattr(model, "config", None), "context", None)


def sample_next(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row, shape (rows, 1), on the logits' device. A generator on another device than
    the logits (a host generator with GPU logits) draws on its own device, at one host round trip."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).to(logits.device)
    return torch.multinomial(probs, 1, generator=generator)


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` itself when it lives on ``device``; otherwise a generator there seeded by one draw from it."""
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


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
        """Sample ``max_new_tokens`` continuation tokens for each prompt row; returns only the new tokens, on
        the model's device (one transfer to the host, by the caller, when it needs them there)."""
        if prompt.dim() == 1:
            prompt = prompt.unsqueeze(0)
        if max_new_tokens <= 0:
            return prompt.new_empty((prompt.shape[0], 0))
        logits, state = self.prefill(prompt)
        generator = device_generator(generator, logits.device)
        new_tokens = torch.empty((prompt.shape[0], max_new_tokens), dtype=torch.long, device=logits.device)
        for index in range(max_new_tokens):
            token = sample_next(logits, temperature, generator)
            new_tokens[:, index : index + 1] = token
            if index + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        return new_tokens
