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
) -> tuple[torch.Tensor, KeyValues]:
    """Logits ``(P, rows * t, vocab)`` of ``ids`` ``(P, rows * t)``: each individual's ``rows`` rows of
    ``t`` tokens, at positions ``start .. start + t - 1``, attending to ``caches`` (each block's keys and
    values of the earlier positions, ``(P * rows, heads, past, head width)``) when given, causally among
    themselves when not. With ``keep_cache``, also each block's keys and values up to the last position
    (else an empty list, so a scoring pass holds no block's keys and values past its use)."""
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
        if caches is not None:
            k = torch.cat([caches[index][0], k], dim=2)
            v = torch.cat([caches[index][1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=caches is None)
        attended = attended.transpose(1, 2).reshape(population, rows * time, width)
        x = x + delta.linear(attended, attn.proj.weight, attn.proj.bias)
        h = F.gelu(delta.linear(delta.layer_norm(x, block.norm2), block.fc.weight, block.fc.bias))
        x = x + delta.linear(h, block.fc_out.weight, block.fc_out.bias)
        if keep_cache:
            new_caches.append((k, v))
    logits = delta.linear(delta.layer_norm(x, model.norm), model.head.weight, model.head.bias)
    return logits, new_caches
