"""Text from a run: a finished run's model rebuilt from ``config.toml`` and ``model.safetensors``, or a
live worker's model; and a run's saved weights loaded into a user's own module (:func:`load_weights`).

Only safe formats are read: the config through ``tomllib``, the weights through safetensors.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import torch
from torch import nn

from evolm.adapters import AdaptedModel
from evolm.config import config_from_dict
from evolm.data import ByteTokenizer
from evolm.errors import UsageError
from evolm.models import LanguageModel, build_model
from evolm.models.build import read_weights, weights_mismatch
from evolm.models.hf import build_hf, hf_path, load_hf_tokenizer

CONFIG_FILE = "config.toml"
WEIGHTS_FILE = "model.safetensors"


def _run_file(run_dir: Path, name: str, hint: str = "") -> Path:
    if not run_dir.exists():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} is a file, not a folder")
    path = run_dir / name
    if not path.is_file():
        raise UsageError(f"run folder {run_dir} has no {name}{hint}")
    return path


def load_run_config(run_dir: str | Path):
    """The :class:`~evolm.config.RunConfig` a run recorded in its ``config.toml``."""

    path = _run_file(Path(run_dir), CONFIG_FILE, " (not an evolm run folder?)")
    try:
        with path.open("rb") as handle:
            mapping = tomllib.load(handle)
    except OSError as error:
        raise UsageError(f"config file {path} cannot be read: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"config file {path} is not valid TOML: {error}") from None
    try:
        return config_from_dict(mapping)
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None


def load_run_model(run_dir: str | Path, weights: str | Path | None = None):
    """The run's model with its saved weights (strict: every name and shape must match), on the CPU, in eval mode."""

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if config.model.name == "custom":
        raise UsageError(
            f"run folder {run_dir} evolved a module given to the Python API; evolm cannot rebuild it: "
            f"load the weights into your module with evolm.load_weights(module, {str(run_dir)!r})"
        )
    path = Path(weights) if weights is not None else _run_file(run_dir, WEIGHTS_FILE, " (the run has not finished)")
    state = read_weights(path, f"weights file {path}")
    model: LanguageModel
    if config.model.name.startswith("hf:"):  # the checkpoint folder the run started from, then the evolved weights
        model, _ = build_hf(config, device="cpu")
    else:
        model = build_model(config.model, config.seed)
    expected = model.state_dict()
    missing, unexpected, reshaped = weights_mismatch(expected, state)
    missing = sorted(missing)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise UsageError(f"weights file {path} does not match the model in {run_dir / CONFIG_FILE}: {'; '.join(parts)}")
    if reshaped is not None:
        raise UsageError(
            f"weights file {path}: tensor {reshaped} has shape {tuple(state[reshaped].shape)}, "
            f"the model in {run_dir / CONFIG_FILE} expects {tuple(expected[reshaped].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_tokenizer(config):
    """The tokenizer of a run: UTF-8 bytes, or a Hugging Face checkpoint's own."""

    if config.model.name.startswith("hf:"):
        return load_hf_tokenizer(hf_path(config.model.name))
    return ByteTokenizer()


def sample_text(
    run_dir: str | Path, prompt: str = "", tokens: int = 200, temperature: float = 0.8, seed: int = 0
) -> str:
    """``tokens`` tokens (bytes, or a Hugging Face model's tokens) of continuation of ``prompt`` (a newline when
    empty), decoded as UTF-8; the prompt is not included.

    The same run, prompt, temperature and seed always give the same text (sampling draws from a
    CPU generator seeded with ``seed``); ``temperature`` 0 is greedy.
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise UsageError(f"sample length --tokens must be a non-negative integer, got {tokens!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise UsageError(f"sampling --temperature must be a finite number >= 0, got {temperature!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"sampling --seed must be an integer, got {seed!r}")
    model = load_run_model(run_dir)
    tokenizer = run_tokenizer(load_run_config(run_dir))
    prompt_tokens = tokenizer.encode(prompt if prompt else "\n")
    generator = torch.Generator().manual_seed(seed % 2**63)
    new_tokens = model.generate(prompt_tokens, tokens, float(temperature), generator)
    return tokenizer.decode(new_tokens[0])


def sample_from_worker(
    worker, genes=None, prompt: str = "\n", tokens: int = 200, temperature: float = 0.8, seed: int = 0
) -> str | None:
    """Text the worker's model writes after ``prompt`` with ``genes`` applied; None when it has no tokenizer
    (a fitness-function run without text) or cannot generate."""
    tokenizer = getattr(worker, "tokenizer", None)
    if tokenizer is None or not hasattr(worker.model, "generate"):
        return None
    prompt_tokens = torch.as_tensor(tokenizer.encode(prompt or "\n"), dtype=torch.long).reshape(1, -1)
    if prompt_tokens.numel() == 0:
        return None
    device = getattr(worker, "device", "cpu")
    generator = torch.Generator().manual_seed(seed % 2**63)
    with torch.no_grad(), worker.applied(genes) as model:
        new_tokens = model.generate(prompt_tokens.to(device), tokens, float(temperature), generator)
    return tokenizer.decode(new_tokens[0].cpu())


def load_weights(module: nn.Module, run_dir, weights: str | Path | None = None) -> nn.Module:
    """Load a run's ``model.safetensors`` (or ``weights``) into ``module``: an evolm wrapper, or the user's own
    module (the wrapper's ``module.``/``model.`` prefix is dropped). Strict: every name and shape must match."""

    path = Path(weights) if weights is not None else Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist (has the run finished?)")
    state = read_weights(path, f"weights file {path}")
    expected = set(module.state_dict())
    if set(state) != expected:
        for prefix in (AdaptedModel.inner_prefix, "model."):
            if all(name.startswith(prefix) for name in state):
                stripped = {name[len(prefix) :]: tensor for name, tensor in state.items()}
                if set(stripped) == expected:
                    state = stripped
                    break
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or ["mismatch"])[0][:200]
        raise UsageError(f"weights file {path} does not match the module: {first}") from None
    return module
