"""The seed document's LSTM language model: embedding -> LSTM -> linear, batch-first.

Generation carries the LSTM's (h, c) state, so each new token is one single-step call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evolm.data import VOCAB_SIZE
from evolm.models.base import LanguageModel


@dataclass
class LSTMConfig:
    vocab_size: int = VOCAB_SIZE
    width: int = 128  # embedding and hidden size
    layers: int = 1
    dropout: float = 0.0


class LSTMLanguageModel(LanguageModel):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.width)
        self.lstm = nn.LSTM(
            config.width,
            config.width,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.width, config.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(self.embedding(tokens))
        return self.head(output)

    def prefill(self, prompt: torch.Tensor):
        output, state = self.lstm(self.embedding(prompt))
        return self.head(output[:, -1]), state

    def step(self, tokens: torch.Tensor, state):
        output, state = self.lstm(self.embedding(tokens), state)
        return self.head(output[:, -1]), state
