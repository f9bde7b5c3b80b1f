import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A tiny model and budget that still learns: every CLI test starts from these settings.
TINY = [
    "--set", "model.width=32", "--set", "model.layers=1", "--set", "model.heads=2", "--set", "model.ff=64",
    "--set", "model.context=32", "--set", "data.batch_size=8", "--set", "data.val_sequences=16",
    "--population-size", "16", "--generations", "12", "--set", "threads=1",
]


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
