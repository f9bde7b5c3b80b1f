"""Starting from trained weights (``--init``, issue 15 item 1): a run picks up exactly where another left off,
and weights of another shape are one clear line, never a traceback."""

import json

import pytest
from conftest import TINY, run_cli

from evolm.baselines import BASELINES
from evolm.config import build_config


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("init") / "trained"
    result = run_cli("run", *TINY, "--generations", "4", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out


def test_a_run_from_init_starts_where_the_saved_run_ended(trained, tmp_path):
    # Two ways to name the weights: the run folder, or its model.safetensors.
    for name, location in (("folder", trained), ("file", trained / "model.safetensors")):
        out = tmp_path / name
        result = run_cli("run", *TINY, "--generations", "1", "--init", str(location), "--out", str(out), "--quiet")
        assert result.returncode == 0, result.stderr
        # The validation loss of the starting model is the one the saved run ended with: the same weights.
        assert _summary(out)["val_loss_initial"] == pytest.approx(_summary(trained)["val_loss_final"], abs=1e-6)
        assert _summary(out)["val_loss_initial"] < _summary(trained)["val_loss_initial"] - 0.05
        # config.toml records where the weights came from, as an absolute path
        assert f'init = "{location.absolute()}"' in (out / "config.toml").read_text()


def test_a_gradient_baseline_starts_from_the_same_weights(trained, tmp_path):
    overrides = [item.split("=", 1) for item in TINY[1::2] if "=" in item]
    config = build_config(overrides=[*overrides, ("model.init", str(trained)), ("seed", 0)])
    summary = BASELINES["adam"](config, tmp_path / "adam", budget_tokens=1, log=lambda *a: None)
    assert summary["val_loss_initial"] == pytest.approx(_summary(trained)["val_loss_final"], abs=1e-6)
    # and its own weights are a start point in turn (the README's way to get trained weights)
    assert (tmp_path / "adam" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--set", "model.width=48", "--set", "model.heads=2"], "token_embedding.weight has shape (256, 32)"),
        (["--model", "lstm"], "has no tensor"),
    ],
)
def test_weights_of_another_model_are_one_line(trained, tmp_path, extra, expected):
    result = run_cli("run", *TINY, *extra, "--init", str(trained), "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.init" in lines[0] and expected in lines[0], result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_missing_weights_are_one_line(tmp_path):
    result = run_cli("run", *TINY, "--init", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr, result.stderr
