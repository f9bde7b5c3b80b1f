"""The run folder: its name, its files, and writing them safely.

A run folder holds ``config.toml`` (the resolved configuration, written by :mod:`evolm.engine`),
``metrics.jsonl`` (one line per generation: the engine; cut back on resume by
:func:`evolm.checkpoint.truncate_metrics`), ``checkpoint/`` (the last atomic checkpoint:
:mod:`evolm.checkpoint`), ``summary.json`` and ``model.safetensors`` (the engine, at the end) and
``fitness.png`` (:mod:`evolm.plot`). The gradient baselines of :mod:`evolm.baselines` write the same files.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from evolm.checkpoint import CHECKPOINT, CHECKPOINT_OLD, TEMPORARY_PREFIX, write_safetensors
from evolm.errors import UsageError

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "model.safetensors", "fitness.png")
RUN_FOLDERS = (CHECKPOINT, CHECKPOINT_OLD)


def model_label(name: str) -> str:
    """A model name fit for a folder name: ``hf:/models/gpt2`` -> ``hf-gpt2``."""
    return "hf-" + Path(name[3:]).name if name.startswith("hf:") else name


def default_run_dir(config) -> Path:
    name = config.name or f"{config.strategy.name}-{model_label(config.model.name)}-seed{config.seed}"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, or that holds an earlier run unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path {path} exists and is not a folder")
    if path.is_dir() and any((path / name).exists() for name in RUN_FILES + RUN_FOLDERS) and not overwrite:
        raise UsageError(f"output folder {path} already holds a run; choose another --out or pass --overwrite")


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create the run directory (after :func:`check_run_dir`), clearing an earlier run's files if overwriting."""
    check_run_dir(path, overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"output folder {path} cannot be created: {error.strerror}") from None
    if overwrite:
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        for folder in [*(path / name for name in RUN_FOLDERS), *path.glob(TEMPORARY_PREFIX + "*")]:
            shutil.rmtree(folder, ignore_errors=True)
    return path


def json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (-1e308 if value < 0 else 1e308)
    return value


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps({k: json_number(v) for k, v in data.items()}, indent=2) + "\n")
    os.replace(temporary, path)


def toml_ready(value):
    if isinstance(value, dict):
        return {k: toml_ready(v) for k, v in value.items() if v is not None}
    return value


def save_model_file(model, path: Path) -> None:
    """The final weights as safetensors, streamed tensor by tensor, replacing ``path`` atomically."""
    temporary = path.with_name(path.name + ".tmp")
    write_safetensors(temporary, model.state_dict())
    os.replace(temporary, path)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, from the operating system."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux
