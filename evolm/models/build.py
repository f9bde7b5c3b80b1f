"""Building a built-in model from its config (``gpt``, ``lstm``) and choosing the device it runs on.

Hugging Face checkpoints are loaded by :mod:`evolm.models.hf`; a user's own module comes through the
Python API (:mod:`evolm.assembly`).
"""

from __future__ import annotations

import torch

from evolm.errors import UsageError
from evolm.models.gpt import GPT, GPTConfig
from evolm.models.lstm import LSTMConfig, LSTMLanguageModel
from evolm.seeding import scoped_torch_seed


def build_model(model_config, seed: int):
    """The configured model under PyTorch's default initialisation, seeded by the run seed."""
    if model_config.name not in ("gpt", "lstm"):  # hf:PATH and Python API modules are built by evolm.assembly
        raise UsageError(
            f"config field model.name: {model_config.name!r} is not a built-in model (gpt or lstm); "
            f"this command works with the built-in models only"
        )
    with scoped_torch_seed(seed):
        if model_config.name == "gpt":
            return GPT(
                GPTConfig(
                    context=model_config.context,
                    width=model_config.width,
                    layers=model_config.layers,
                    heads=model_config.heads,
                    ff=model_config.ff,
                    dropout=model_config.dropout,
                )
            )
        return LSTMLanguageModel(
            LSTMConfig(width=model_config.width, layers=model_config.layers, dropout=model_config.dropout)
        )


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"config field device is {name!r} but no CUDA device is available here")
    return torch.device(name)
