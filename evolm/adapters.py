"""Adapters between a user's module and evolm: its raw output -> logits ``(batch, time, vocab)``, and the
:class:`AdaptedModel` wrapper that makes any module an evolm language model (re-exported by :mod:`evolm.api`).

:func:`check_logits` runs one forward on token ids and says, in one line, what layout is wrong and which
adapter fixes it; :mod:`evolm.probe` then checks what a shape cannot show (row independence, causality).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evolm.errors import UsageError
from evolm.genome import ParamSpace
from evolm.models.base import LanguageModel, model_context

# --- adapters: a module's raw output -> logits (batch, time, vocab) -----------------------------------


def default_logits(output):
    """A tensor as is; the ``.logits`` of an output object (Hugging Face style); a tuple's first element."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


def time_major(output):
    """Adapter for time-major logits ``(time, batch, vocab)`` (an ``nn.LSTM`` without ``batch_first``, whose
    ``forward`` transposes the token ids itself); a tuple or an object with ``.logits`` is unpacked first."""
    return default_logits(output).transpose(0, 1)


@dataclass(frozen=True)
class TimeMajorIO:
    """Adapter for a module time-major on both sides, like the seed document's ``LanguageModel``: it is given
    token ids ``(time, batch)`` and its logits ``(time, batch, vocab)`` are swapped back (as :func:`time_major`).
    Use the instance :data:`time_major_io`."""

    transpose_tokens = True  # read by AdaptedModel: the token ids go in transposed

    def __call__(self, output):
        return time_major(output)


time_major_io = TimeMajorIO()


@dataclass(frozen=True)
class logits_from:  # noqa: N801 - used like a function: adapter=logits_from("logits")
    """Adapter taking the logits out of a structured output: ``logits_from("logits")`` (an attribute or a
    dict key), ``logits_from(0)`` (a tuple position); ``time_major=True`` also swaps time and batch. Picklable."""

    key: Any
    time_major: bool = False

    def __call__(self, output):
        if isinstance(self.key, int) and isinstance(output, (tuple, list)):
            logits = output[self.key]
        elif isinstance(output, dict):
            logits = output[self.key]
        else:
            logits = getattr(output, self.key)
        return logits.transpose(0, 1) if self.time_major else logits


@dataclass
class ModelInfo:
    """What evolm reads from ``model.config``: the longest sequence the model takes (None: unbounded)."""

    context: int | None = None


class AdaptedModel(LanguageModel):
    """A user's module as an evolm language model: ``forward(tokens)`` returns ``(batch, time, vocab)``
    logits through the adapter. Generation re-encodes the (windowed) text at each step: a foreign module
    has no cache protocol. Its parameters keep the module's names under the prefix ``module.``."""

    inner_prefix = "module."

    def __init__(self, module: nn.Module, adapter: Callable | None = None, context: int | None = None):
        super().__init__()
        self.module = module
        self.adapter = adapter
        self.config = ModelInfo(context)

    @property
    def inner(self) -> nn.Module:
        return self.module

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if getattr(self.adapter, "transpose_tokens", False):
            tokens = tokens.t()
        output = self.module(tokens)
        return self.adapter(output) if self.adapter is not None else default_logits(output)

    def _window(self, tokens: torch.Tensor) -> torch.Tensor:
        context = self.config.context
        return tokens if context is None else tokens[:, -context:]

    def prefill(self, prompt: torch.Tensor):
        window = self._window(prompt)
        return self(window)[:, -1], window

    def step(self, tokens: torch.Tensor, window):
        window = self._window(torch.cat([window, tokens], dim=1))
        return self(window)[:, -1], window


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside an evolm wrapper (the model itself when unwrapped)."""
    return getattr(model, "inner", model)


def param_space(model: nn.Module, pattern: str) -> ParamSpace:
    """The evolving tensors of ``model``; the regex matches the wrapped module's own parameter names
    (``lstm.weight_ih_l0``, ``transformer.h.1.mlp.c_fc.weight``), not evolm's wrapper prefix."""
    inner = getattr(model, "inner", None)
    if inner is None:
        return ParamSpace(model, pattern)
    space = ParamSpace(inner, pattern)
    space.model = model
    space.names = [f"{model.inner_prefix}{name}" for name in space.names]  # keys of the wrapper's state_dict
    return space


def check_logits(model: nn.Module, vocab: int, device) -> None:
    """One probe forward: the output must be logits (batch, time, >= vocab) for batch-first token ids."""
    context = model_context(model)
    time = 5 if context is None else max(1, min(5, context))
    batch = 2 if time != 2 else 3
    tokens = (torch.arange(batch * time).reshape(batch, time) % vocab).to(device)
    hint = "pass adapter= (e.g. evolm.api.time_major, evolm.api.logits_from('logits')) mapping the output to logits (batch, time, vocab)"
    try:
        with torch.no_grad():
            logits = model(tokens)
    except Exception as error:  # the user's forward failed on token ids: say so, with the first line of why
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise UsageError(
            f"model forward failed on token ids of shape ({batch}, {time}): {type(error).__name__}: {first}"
        ) from None
    if not isinstance(logits, torch.Tensor):
        raise UsageError(
            f"model output (after the adapter) is a {type(logits).__name__}, not a tensor of logits; {hint}"
        )
    shape = tuple(logits.shape)
    if len(shape) != 3 or shape[:2] != (batch, time):
        looks = (
            "; it looks time-major: pass adapter=evolm.api.time_major" if shape[:2] == (time, batch) else f"; {hint}"
        )
        raise UsageError(
            f"model output has shape {shape} for token ids ({batch}, {time}); evolm needs logits "
            f"({batch}, {time}, vocab){looks}"
        )
    if shape[2] < vocab:
        raise UsageError(f"model logits have {shape[2]} entries but the tokenizer's vocabulary has {vocab} tokens")


__all__ = [
    "AdaptedModel",
    "ModelInfo",
    "TimeMajorIO",
    "check_logits",
    "default_logits",
    "logits_from",
    "param_space",
    "time_major",
    "time_major_io",
    "unwrap",
]
