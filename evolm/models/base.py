"""What every evolm language model offers, and the one incremental sampling loop they share.

A model maps token ids ``(batch, time)`` to logits ``(batch, time, vocab)``. For generation it
also offers ``prefill(prompt) -> (last_logits, state)`` and ``step(tokens, state) -> (logits, state)``,
so n new tokens cost n single-token steps (a key/value cache or a recurrent state), never n
re-encodings of the whole text.

The sampling loop never makes a GPU wait for the host. A token is drawn as ``torch.multinomial``
draws one sample (an exponential race: ``argmax(p / q)``, ``q ~ Exp(1)``), written out so that
none of multinomial's checks runs: they read the probabilities back to the host (older torch) or
abort the whole CUDA context on a NaN (newer torch). The race's noise comes from a generator on the
logits' device (seeded by one draw from the caller's host generator), tokens go into a
preallocated tensor, and whether any step's probabilities were NaN is kept on the device and read
once, after the last step. On a CPU the tokens are exactly those ``torch.multinomial`` draws with
the host generator passed in (tests/test_models.py, tests/test_gpu_paths.py).
"""

from __future__ import annotations

import torch
from torch import nn


class NonFiniteLogits(RuntimeError):
    """A model's logits were NaN or infinite while it wrote: it has diverged (sampling has no distribution)."""


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_context(model: nn.Module) -> int | None:
    """Longest sequence the model's forward takes (the GPT's learned positions), None when unbounded (LSTM)."""
    return getattr(getattr(model, "config", None), "context", None)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device`` without making the host wait for the device: a host tensor goes to a GPU
    through pinned memory and an asynchronous copy (a copy from pageable memory waits for the stream)."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _race_noise(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``Exp(1)`` noise shaped like ``probs``, drawn as ``torch.multinomial`` draws it (one ``exponential_``
    over the whole tensor), by ``generator`` on its own device, then placed on ``probs``'s device."""
    if generator is None or generator.device == probs.device:
        return torch.empty_like(probs).exponential_(generator=generator)
    noise = torch.empty(probs.shape, dtype=probs.dtype, device=generator.device).exponential_(generator=generator)
    return to_device(noise, probs.device)


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator | None,
    invalid: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row, shape (rows, 1), on the logits' device: the token ``torch.multinomial(probs, 1,
    generator=generator)`` draws. A generator on another device than the logits (a host generator with
    GPU logits, as the gradient baselines pass) draws the noise on its own device, copied over without a wait.

    Probabilities with a NaN (non-finite logits) raise :class:`NonFiniteLogits` at once, which reads a
    flag from the device; a sampling loop passes ``invalid`` (a boolean scalar on the device) instead,
    which is set when they do, and reads it once at the end.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    # Softmax gives no negative or infinite value: its only invalid output is NaN (multinomial's check).
    nan = probs.isnan().any()
    if invalid is not None:
        invalid.logical_or_(nan)
    elif nan:
        raise NonFiniteLogits("probability tensor contains NaN: the model's logits are not finite")
    return (probs / _race_noise(probs, generator)).argmax(dim=-1, keepdim=True)


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
        the model's device (one transfer to the host, by the caller, when it needs them there).

        Raises :class:`NonFiniteLogits` after the last step when any sampled step's logits were not
        finite (the one read from the device in the call). Greedy decoding (temperature 0) never raises.
        """
        if prompt.dim() == 1:
            prompt = prompt.unsqueeze(0)
        if max_new_tokens <= 0:
            return prompt.new_empty((prompt.shape[0], 0))
        logits, state = self.prefill(prompt)
        generator = device_generator(generator, logits.device)
        new_tokens = torch.empty((prompt.shape[0], max_new_tokens), dtype=torch.long, device=logits.device)
        invalid = torch.zeros((), dtype=torch.bool, device=logits.device) if temperature > 0 else None
        for index in range(max_new_tokens):
            token = sample_next(logits, temperature, generator, invalid)
            new_tokens[:, index : index + 1] = token
            if index + 1 < max_new_tokens:
                logits, state = self.step(token, state)
        if invalid is not None and bool(invalid):
            raise NonFiniteLogits("probability tensor contains NaN: the model's logits were not finite while it wrote")
        return new_tokens
