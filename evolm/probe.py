"""A first-use probe of a user's language model: are the rows of a batch independent, and is it causal?

A module can run without error and still compute the wrong thing. The classic case is the seed
document's ``LanguageModel``: an ``nn.LSTM`` built without ``batch_first=True`` and called with
``(batch, time)`` token ids recurs over the batch, so each position sees the same position of the
rows before it and none of its own past. Its logits have the right shape, and evolution would happily
optimise it. Likewise a bidirectional layer, or attention without a causal mask, lets position ``t``
read the token it is meant to predict, and its likelihood means nothing.

:func:`probe_language_model` checks both properties on a tiny seeded batch (3 rows of at most 6
tokens, three forward passes under ``torch.no_grad`` in eval mode, on the model's own device), so it
costs next to nothing even for a large model:

1. row independence: changing every token of the middle row leaves the other rows' logits unchanged
   (the middle row catches mixing in either direction along the batch);
2. causality: changing the last token of every row leaves the logits of every earlier position
   unchanged.

Logits are compared with a tolerance scaled to the logits' dtype and magnitude, so float noise never
fails a sound model while a real dependence (orders of magnitude larger) always does.
"""

from __future__ import annotations

import torch
from torch import nn

from evolm.errors import UsageError

PROBE_ROWS = 3  # the middle row changes; the rows on either side must not notice
PROBE_TOKENS = 6  # enough positions to see a leak from the last token, few enough to cost nothing
SKIP_HINT = "evolve(..., probe=False) / resume(..., probe=False) skips this check"


def _tolerance(logits: torch.Tensor) -> float:
    """Float noise allowance: a few units in the last place of the dtype, relative to the logits' size."""
    eps = torch.finfo(logits.dtype).eps if logits.is_floating_point() else 0.0
    finite = logits.detach().float()
    finite = finite[torch.isfinite(finite)]
    scale = 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)
    return max(1e-5, 16 * eps) * scale


def _changed(before: torch.Tensor, after: torch.Tensor, tolerance: float) -> float | None:
    """The largest difference where ``before`` and ``after`` differ by more than ``tolerance`` (a NaN or an
    infinity on one side only counts as infinite); None when they agree everywhere."""
    before, after = before.float(), after.float()
    same = (before == after) | (torch.isnan(before) & torch.isnan(after))
    difference = torch.where(same, torch.zeros_like(before), (after - before).abs().nan_to_num(nan=float("inf")))
    largest = float(difference.max()) if difference.numel() else 0.0
    return largest if largest > tolerance else None


def _other_tokens(tokens: torch.Tensor, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Tokens that differ from ``tokens`` at every position (a seeded shift in [1, vocab))."""
    shift = torch.randint(1, max(vocab, 2), tokens.shape, generator=generator)
    return (tokens + shift) % max(vocab, 2)


def probe_language_model(model: nn.Module, vocab: int, device, context: int | None = None, *, seed: int = 0) -> None:
    """Raise one :class:`UsageError` when ``model`` (token ids ``(batch, time)`` -> logits ``(batch, time,
    vocab)``) mixes the rows of a batch or lets a position see a later token; return quietly otherwise.

    ``context`` bounds the probe's length (the model's longest sequence); the model's train/eval mode is
    restored afterwards, and no global random state is drawn from (the inputs come from a seeded generator).
    """
    length = PROBE_TOKENS if context is None else max(1, min(PROBE_TOKENS, int(context)))
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, max(vocab, 2), (PROBE_ROWS, length), generator=generator)
    other_row = tokens.clone()
    other_row[1] = _other_tokens(tokens[1], vocab, generator)
    other_last = tokens.clone()
    other_last[:, -1] = _other_tokens(tokens[:, -1], vocab, generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base, rows_changed, last_changed = (model(batch.to(device)) for batch in (tokens, other_row, other_last))
    finally:
        model.train(was_training)
    tolerance = _tolerance(base)

    for row in (0, PROBE_ROWS - 1):
        difference = _changed(base[row], rows_changed[row], tolerance)
        if difference is not None:
            raise UsageError(
                f"model probe: row independence fails (the logits of row {row} changed by {difference:.3g} when only "
                f"row 1's tokens changed): the module mixes the sequences of a batch. An nn.LSTM, nn.GRU or "
                f"nn.RNN built without batch_first=True reads (batch, time) token ids as (time, batch) and recurs over "
                f"the batch: build it with batch_first=True, or, if the module is time-major on both sides (tokens "
                f"(time, batch) in, logits (time, batch, vocab) out), pass adapter=evolm.api.time_major_io. {SKIP_HINT}"
            )
    if length >= 2:
        difference = _changed(base[:, :-1], last_changed[:, :-1], tolerance)
        if difference is not None:
            raise UsageError(
                f"model probe: causality fails (logits of earlier positions changed by {difference:.3g} when only the "
                f"last token of each row changed): position t must not see later tokens, or it learns to "
                f"copy the token it should predict. Use a causal mask in attention (e.g. is_causal=True, or a "
                f"triangular attn_mask), no bidirectional recurrence (bidirectional=False), and only left-padded "
                f"convolutions. {SKIP_HINT}"
            )


__all__ = ["PROBE_ROWS", "PROBE_TOKENS", "probe_language_model"]
