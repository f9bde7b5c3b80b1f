import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A tiny model and budget that still learns: every CLI test starts from these settings.
TINY = [
    "--set",
    "model.width=32",
    "--set",
    "model.layers=1",
    "--set",
    "model.heads=2",
    "--set",
    "model.ff=64",
    "--set",
    "model.context=32",
    "--set",
    "data.batch_size=8",
    "--set",
    "data.val_sequences=16",
    "--population-size",
    "16",
    "--generations",
    "12",
    "--set",
    "threads=1",
]

# The model and data sizes of TINY as config overrides, for tests that build a config in-process.
TINY_SIZES = [
    ("model.width", 32),
    ("model.layers", 1),
    ("model.heads", 2),
    ("model.ff", 64),
    ("model.context", 32),
    ("data.batch_size", 8),
    ("data.val_sequences", 16),
    ("threads", 1),
]


from evolm.engine import WALL_CLOCK_FIELDS  # noqa: E402 - the engine names what varies with the clock

WALL_CLOCK = set(WALL_CLOCK_FIELDS)


def read_metrics(run_dir):
    """The rows of a run's metrics.jsonl."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_wall_clock(rows):
    """Rows with the wall-clock fields dropped: what must repeat exactly for the same seed."""
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in rows]


def run_cli(*args, cwd=None, timeout=300):
    """Run ``python -m evolm`` as a real subprocess."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "evolm", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tiny_args():
    return list(TINY)


@pytest.fixture(scope="session")
def ray_runtime():
    """One local Ray runtime for the whole session, started as evolm starts its own (loopback only,
    token authentication on), with its token kept out of ~/.ray.

    evolm shares a runtime the process already holds, so every Ray test runs on this one."""
    import secrets

    import ray

    from evolm.evaluators.ray_cluster import refresh_ray_config, start_local_runtime

    saved = {key: os.environ.get(key) for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    refresh_ray_config()
    start_local_runtime(num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        refresh_ray_config()
