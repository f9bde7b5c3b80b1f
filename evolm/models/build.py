"""The built-in models by name (``gpt``, ``lstm``), built from the run config, and the device they run on.

Adding a model: its module under ``evolm/models/`` (an :class:`~evolm.models.base.LanguageModel` and a
config dataclass) and one line in :data:`BUILT_IN`. Config fields the model's dataclass declares are
taken from ``[model]`` (``context``, ``width``, ...); the rest keep the dataclass defaults. Hugging
Face checkpoints are loaded by :mod:`evolm.models.hf`; a user's own module comes through the Python API
(:mod:`evolm.assembly`).
"""

from __future__ import annotations

import dataclasses

import torch

from evolm.errors import UsageError
from evolm.models.base import LanguageModel
from evolm.models.gpt import GPT, GPTConfig
from evolm.models.lstm import LSTMConfig, LSTMLanguageModel
from evolm.seeding import scoped_torch_seed

# name -> (model class, its config dataclass)
BUILT_IN: dict[str, tuple[type[LanguageModel], type]] = {
    "gpt": (GPT, GPTConfig),
    "lstm": (LSTMLanguageModel, LSTMConfig),
}


def build_model(model_config, seed: int) -> LanguageModel:
    """The configured model under PyTorch's default initialisation, seeded by the run seed."""
    if model_config.name not in BUILT_IN:  # hf:PATH and Python API modules are built by evolm.assembly
        raise UsageError(
            f"config field model.name: {model_config.name!r} is not a built-in model ({' or '.join(BUILT_IN)}); "
            f"this command works with the built-in models only"
        )
    model_class, settings_class = BUILT_IN[model_config.name]
    settings = {
        field.name: getattr(model_config, field.name)
        for field in dataclasses.fields(settings_class)
        if hasattr(model_config, field.name)
    }
    with scoped_torch_seed(seed):
        return model_class(settings_class(**settings))


def resolve_device(name: str) -> torch.device:
    """``config.device`` as a torch device, refused when it names CUDA on a machine without it."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"config field device is {name!r} but no CUDA device is available here")
    return torch.device(name)
