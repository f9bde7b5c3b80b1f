"""The built-in GPT's whole-population forward, written out by hand on (P, rows * t, width) (EGGROLL,
Sarkar et al. 2025, arXiv:2511.16652).

The general batched pass (:func:`evolm.population.population_forwards`) replaces every evolving
module's ``forward`` and pays Python work per module call; for the GPT, the model evolm runs most, the
same per-individual operations are written out once here, with no module hooks (the measurements are
in :mod:`evolm.population`'s "Speed" and :class:`evolm.population_writing.WritingDelta`). One pass
serves both uses: scoring a whole sequence without a cache
(:func:`evolm.population.gpt_population_logits`) and writing, a prefill then cached steps
(:class:`evolm.population_writing`'s GPT writer), with the same cache layout as
:class:`evolm.models.gpt.GPT`.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from evolm.models.gpt import GPT, Block

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]


class IndividualOperations(Protocol):
    """What the pass asks of a population's perturbations (:class:`evolm.population.PopulationDelta`):
    each individual's embedding lookup, linear layer and layer norm on (P, N, features)."""

    size: int

    def embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor: ...

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...

    def layer_norm(self, x: torch.Tensor, module: nn.LayerNorm) -> torch.Tensor: ...


def gpt_population_pass(
    model: GPT,
    delta: IndividualOperations,
    ids: torch.Tensor,
    rows: int,
    start: int = 0,
    caches: KeyValues | None = None,
    keep_cache: bool = False,
    capacity: int = 0,
) -> tuple[torch.Tensor, KeyValues]:
    """Logits ``(P, rows * t, vocab)`` of ``ids`` ``(P, rows * t)``: each individual's ``rows`` rows of
    ``t`` tokens, at positions ``start .. start + t - 1``, attending to ``caches`` (each block's keys and
    values of positions ``0 .. start - 1``, in buffers ``(P * rows, heads, room, head width)``) when
    given, causally among themselves when not. With ``keep_cache``, also each block's buffers, now
    holding positions up to ``start + t - 1`` (room for at least ``capacity``: give the longest the
    writing will reach, so that no step copies the cache); else an empty list, so a scoring pass holds
    no block's keys and values past its use."""
    population = delta.size
    time = ids.shape[1] // rows
    positions = torch.arange(start, start + time, device=ids.device).repeat(rows).expand(population, -1)
    x = delta.embedding(ids, model.token_embedding.weight) + delta.embedding(positions, model.position_embedding.weight)
    new_caches: KeyValues = []
    for index, block in enumerate(cast("list[Block]", model.blocks)):
        attn, width = block.attn, x.shape[-1]
        qkv = delta.linear(delta.layer_norm(x, block.norm1), attn.qkv.weight, attn.qkv.bias)
        shape = (population * rows, time, attn.heads, width // attn.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in qkv.split(width, dim=2))
        if keep_cache or caches is not None:
            buffers = _written(None if caches is None else caches[index], k, v, start, capacity)
            new_caches.append(buffers)
            if caches is not None:  # a prefill attends to its own contiguous k, v (SDPA ran slower on views)
                k, v = buffers[0][:, :, : start + time], buffers[1][:, :, : start + time]
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=caches is None)
        attended = attended.transpose(1, 2).reshape(population, rows * time, width)
        x = x + delta.linear(attended, attn.proj.weight, attn.proj.bias)
        h = F.gelu(delta.linear(delta.layer_norm(x, block.norm2), block.fc.weight, block.fc.bias))
        x = x + delta.linear(h, block.fc_out.weight, block.fc_out.bias)
    logits = delta.linear(delta.layer_norm(x, model.norm), model.head.weight, model.head.bias)
    return logits, new_caches if keep_cache else []


def _written(
    buffers: tuple[torch.Tensor, torch.Tensor] | None, k: torch.Tensor, v: torch.Tensor, start: int, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` and ``v`` written in place at positions ``start ..`` of a block's buffers, new or grown (to
    at least twice the old room) when they lack room. In place rather than ``torch.cat`` per step, which
    copies the whole cache at every token (cProfile put a quarter of the python-lines task's writing time
    in it; with the rank-one multiply-add of :meth:`evolm.population.PopulationDelta.linear`, writing
    alone went from 38.7k to 44.4k tok/s on that task's shape, one thread, 2 CPU cores)."""
    end = start + k.shape[2]
    if buffers is None or buffers[0].shape[2] < end:
        room = max(capacity, end, 2 * buffers[0].shape[2] if buffers is not None else 0)
        grown = tuple(k.new_empty(k.shape[0], k.shape[1], room, k.shape[3]) for _ in range(2))
        if buffers is not None:
            for old, new in zip(buffers, grown):
                new[:, :, :start] = old[:, :, :start]
        buffers = (grown[0], grown[1])
    buffers[0][:, :, start:end] = k
    buffers[1][:, :, start:end] = v
    return buffers
