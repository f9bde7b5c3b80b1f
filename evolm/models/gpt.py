"""A small causal Transformer language model (pre-norm blocks, learned positions), after nanoGPT.

Generation keeps a key/value cache per layer. Positions are learned up to ``context``; when a
cached generation reaches that length the cache is rebuilt from the last half-context of tokens,
so long generations stay linear in length (amortised) instead of re-encoding at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evolm.data import VOCAB_SIZE
from evolm.models.base import LanguageModel


@dataclass
class GPTConfig:
    vocab_size: int = VOCAB_SIZE
    context: int = 64  # longest sequence the learned position table covers
    width: int = 64
    layers: int = 2
    heads: int = 4
    ff: int = 256  # feed-forward hidden width (4x width, as in GPT-2)
    dropout: float = 0.0  # evolution scores deterministic forwards; dropout is for the gradient baselines


class SelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None):
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        shape = (batch, time, self.heads, width // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        # With a cache, one new query attends to every cached key: no causal mask is needed.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=cache is None, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(batch, time, width)
        return self.proj(y), (k, v)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.width)
        self.fc = nn.Linear(config.width, config.ff)
        self.fc_out = nn.Linear(config.ff, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        attended, new_cache = self.attn(self.norm1(x), cache)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.fc_out(F.gelu(self.fc(self.norm2(x)))))
        return x, new_cache


class GPT(LanguageModel):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.context, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)

    def _run(self, tokens: torch.Tensor, start: int, caches=None):
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        new_caches = []
        for index, block in enumerate(self.blocks):
            x, cache = block(x, None if caches is None else caches[index])
            new_caches.append(cache)
        return self.head(self.norm(x)), new_caches

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] > self.config.context:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model context {self.config.context}")
        return self._run(tokens, 0)[0]

    def prefill(self, prompt: torch.Tensor):
        window = prompt[:, -self.config.context :]
        logits, caches = self._run(window, 0)
        # The state keeps the tokens of the window so the cache can be rebuilt when it fills.
        return logits[:, -1], (caches, window)

    def step(self, tokens: torch.Tensor, state):
        caches, window = state
        window = torch.cat([window, tokens], dim=1)
        if window.shape[1] > self.config.context:
            # Out of learned positions: re-encode the last half-context once, then continue cached.
            return self.prefill(window[:, -(self.config.context // 2 + 1) :])
        logits, caches = self._run(tokens, window.shape[1] - 1, caches)
        return logits[:, -1], (caches, window)
