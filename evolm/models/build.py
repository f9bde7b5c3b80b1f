"""The built-in models by name (``gpt``, ``lstm``), built from the run config, and the device they run on.

Adding a model: its module under ``evolm/models/`` (an :class:`~evolm.models.base.LanguageModel` and a
config dataclass) and one line in :data:`BUILT_IN`. Config fields the model's dataclass declares are
taken from ``[model]`` (``context``, ``width``, ...); the rest keep the dataclass defaults. Hugging
Face checkpoints are loaded by :mod:`evolm.models.hf`; a user's own module comes through the Python API
(:mod:`evolm.assembly`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

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


def build_initial_model(model_config, seed: int) -> LanguageModel:
    """The model a run starts from: built as :func:`build_model` does, then loaded with the trained weights
    of ``model.init`` when it names some (a run folder's ``model.safetensors`` or a ``.safetensors`` file)."""
    model = build_model(model_config, seed)
    if model_config.init:
        load_initial_weights(model, model_config.init)
    return model


def read_weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU; a file that is missing or not safetensors (a pickle,
    garbage) is one UsageError that starts with ``where``. Never unpickles anything."""
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise UsageError(f"{where} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        message = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise UsageError(f"{where} is not a valid safetensors file: {message}") from None


def weights_mismatch(expected: dict, state: dict) -> tuple[list[str], list[str], str | None]:
    """How ``state`` differs from a model's ``expected`` state dict: the names it lacks (in the model's
    order), the names the model lacks (sorted), and the first present tensor whose shape differs."""
    missing = [name for name in expected if name not in state]
    unexpected = sorted(set(state) - set(expected))
    reshaped = next(
        (name for name, t in expected.items() if name in state and tuple(state[name].shape) != tuple(t.shape)), None
    )
    return missing, unexpected, reshaped


def load_initial_weights(model: nn.Module, location: str | Path) -> None:
    """Load ``location`` (a run folder or a ``.safetensors`` file) into ``model``, strictly: a missing,
    unexpected or differently shaped tensor is one UsageError naming the first one that differs."""
    path = Path(location)
    if path.is_dir():
        path = path / "model.safetensors"
    where = f"config field model.init: weights file {path}"
    if not path.is_file():
        raise UsageError(f"{where} does not exist (a run folder holds model.safetensors once the run has finished)")
    state = read_weights(path, where)
    expected = model.state_dict()
    missing, unexpected, reshaped = weights_mismatch(expected, state)
    if missing:
        raise UsageError(f"{where} has no tensor {missing[0]} (it holds weights of another model)")
    if reshaped is not None:
        raise UsageError(
            f"{where}: tensor {reshaped} has shape {tuple(state[reshaped].shape)}, the configured model "
            f"expects {tuple(expected[reshaped].shape)} (set model.* as in the run that saved it)"
        )
    if unexpected:
        raise UsageError(f"{where} has tensor {unexpected[0]}, which the configured model does not have")
    model.load_state_dict(state, strict=True)


def resolve_device(name: str | torch.device) -> torch.device:
    """``config.device`` as a torch device, refused when it names CUDA on a machine without it."""
    if isinstance(name, torch.device):
        return name
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"config field device is {name!r} but no CUDA device is available here")
    return torch.device(name)
