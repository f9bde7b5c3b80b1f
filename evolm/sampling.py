"""Text from a finished run: rebuild the model from ``config.toml``, load ``model.safetensors``, sample.

Only safe formats are read: the config through ``tomllib``, the weights through safetensors.
"""

from __future__ import annotations

import math
import tomllib
import unicodedata
from pathlib import Path

import torch

from evolm.errors import UsageError

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
    from evolm.config import config_from_dict

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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from evolm.worker import build_model

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if config.model.name == "custom":
        raise UsageError(
            f"run folder {run_dir} evolved a module given to the Python API; evolm cannot rebuild it: "
            f"load the weights into your module with evolm.load_weights(module, {str(run_dir)!r})"
        )
    path = Path(weights) if weights is not None else _run_file(run_dir, WEIGHTS_FILE, " (the run has not finished)")
    try:
        state = load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise UsageError(f"weights file {path} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        message = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise UsageError(f"weights file {path} is not a valid safetensors file: {message}") from None
    if config.model.name.startswith("hf:"):  # the checkpoint folder the run started from, then the evolved weights
        from evolm.models.hf import build_hf

        model, _ = build_hf(config, device="cpu")
    else:
        model = build_model(config.model, config.seed)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise UsageError(f"weights file {path} does not match the model in {run_dir / CONFIG_FILE}: {'; '.join(parts)}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UsageError(
                f"weights file {path}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"the model in {run_dir / CONFIG_FILE} expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model.eval()


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters other than newline and tab (an ESC a young model
    sampled, say) become U+FFFD, so model output can never drive the terminal."""
    return "".join(
        c
        if c in "\n\t" or not unicodedata.category(c).startswith("C") or unicodedata.category(c) in ("Co", "Cn")
        else "\ufffd"
        for c in text
    )


def run_tokenizer(config):
    """The tokenizer of a run: UTF-8 bytes, or a Hugging Face checkpoint's own."""
    from evolm.data import ByteTokenizer

    if config.model.name.startswith("hf:"):
        from evolm.models.hf import hf_path, load_hf_tokenizer

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
