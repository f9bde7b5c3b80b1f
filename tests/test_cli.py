"""``evolm run`` as a real subprocess: it learns, writes valid files, repeats itself, and refuses bad input."""

import json
import math
import tomllib

import pytest
from conftest import read_metrics, without_wall_clock
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import TINY, run_cli

    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = run_cli("run", *TINY, "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_lowers_validation_loss_and_writes_valid_files(tiny_run):
    out, result = tiny_run
    assert "parameters" in result.stdout  # the parameter count is printed at start
    config = tomllib.loads((out / "config.toml").read_text())
    assert config["strategy"]["population_size"] == 16 and config["model"]["width"] == 32
    rows = read_metrics(out)
    assert [row["generation"] for row in rows] == list(range(12))
    for key in (
        "generation",
        "wall_seconds",
        "compute_seconds",
        "evaluations",
        "forward_tokens",
        "best_fitness",
        "mean_fitness",
        "std_fitness",
    ):
        assert all(key in row for row in rows), key
    # Validation and the report: the first generation, every report_every-th (10 by default) and the last.
    assert [row["generation"] for row in rows if "val_loss" in row] == [0, 9, 11]
    assert [row["generation"] for row in rows if "distinct_2" in row] == [0, 9, 11]
    assert rows[-1]["evaluations"] == 12 * 16
    assert rows[-1]["forward_tokens"] == 12 * 16 * 8 * 32
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "method",
        "generations",
        "evaluations",
        "forward_tokens",
        "wall_seconds",
        "val_loss_initial",
        "val_loss_final",
        "best_fitness",
    ):
        assert key in summary, key
    assert summary["method"] == "es"
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.2, summary
    assert math.isclose(summary["val_loss_final"], rows[-1]["val_loss"])
    weights = load_file(str(out / "model.safetensors"))
    assert "head.weight" in weights and weights["head.weight"].shape == (256, 32)


def test_same_seed_gives_the_same_metrics(tiny_run, tmp_path, cli, tiny_args):
    out, _ = tiny_run
    again = tmp_path / "again"
    result = cli("run", *tiny_args, "--out", str(again), "--quiet")
    assert result.returncode == 0, result.stderr
    assert without_wall_clock(read_metrics(again)) == without_wall_clock(read_metrics(out))


def test_existing_run_is_not_overwritten(tiny_run, cli, tiny_args):
    out, _ = tiny_run
    before = (out / "metrics.jsonl").read_bytes()
    result = cli("run", *tiny_args, "--out", str(out), "--quiet")
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (out / "metrics.jsonl").read_bytes() == before


def _write(path, content, binary=False):
    (path.write_bytes if binary else path.write_text)(content)
    return str(path)


BAD_INPUTS = [
    ("missing data path", lambda p: ["--data", str(p / "nope.txt")], "nope.txt does not exist"),
    ("empty data file", lambda p: ["--data", _write(p / "empty.txt", "")], "is empty"),
    ("corpus shorter than a window", lambda p: ["--data", _write(p / "short.txt", "tiny")], "too short"),
    (
        "non-UTF-8 file",
        lambda p: ["--data", _write(p / "latin.txt", "caf\xe9 ".encode("latin-1") * 99, True)],
        "not UTF-8",
    ),
    ("unknown model", lambda p: ["--model", "rnn"], "unknown model 'rnn'"),
    ("zero population", lambda p: ["--population-size", "0"], "strategy.population_size must be positive"),
    ("negative generations", lambda p: ["--generations", "-3"], "generations must be positive"),
    ("non-integer generations", lambda p: ["--generations", "many"], "generations must be an integer"),
    ("unknown --set key", lambda p: ["--set", "model.depth=3"], "unknown config key model.depth"),
    ("unknown --set section", lambda p: ["--set", "optimizer.lr=3"], "unknown config key optimizer"),
    ("--set without =", lambda p: ["--set", "model.width"], "--set expects KEY=VALUE"),
    ("missing config file", lambda p: ["--config", str(p / "none.toml")], "none.toml does not exist"),
    ("invalid TOML", lambda p: ["--config", _write(p / "bad.toml", "model = [")], "not valid TOML"),
    (
        "unknown TOML key",
        lambda p: ["--config", _write(p / "k.toml", "[model]\ncolour = 3\n")],
        "unknown config key model.colour",
    ),
    ("odd es population", lambda p: ["--population-size", "7"], "must be even"),
    ("cuda where none is present", lambda p: ["--device", "cuda"], "no CUDA device"),
    ("unknown option", lambda p: ["--colour", "red"], "unrecognized arguments"),
]


@pytest.mark.parametrize("name, make_args, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, cli, name, make_args, message):
    if name == "cuda where none is present":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    # --generations 1 comes first so a case's own --generations wins (argparse keeps the last).
    result = cli(
        "run", "--generations", "1", *make_args(tmp_path), "--out", str(tmp_path / "out"), "--quiet", timeout=60
    )
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # a refused run leaves no half-made run folder


# --- choosing a strategy chooses its working defaults (evolm.config.STRATEGY_DEFAULTS) -----------------------------


@pytest.mark.parametrize("strategy", ["ga", "nsga2", "cmaes"])
def test_choosing_a_strategy_alone_gives_a_run(tmp_path, cli, strategy):
    from evolm.config import strategy_defaults

    out = tmp_path / strategy
    result = cli("run", "--strategy", strategy, "--generations", "2", "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((out / "config.toml").read_text())
    defaults = strategy_defaults(strategy)
    assert config["strategy"]["population_size"] == defaults["strategy.population_size"]
    assert (config["genome"]["name"], config["genome"]["params"]) == (
        defaults["genome.name"],
        defaults["genome.params"],
    )
    rows = read_metrics(out)
    assert [row["generation"] for row in rows] == [0, 1]
    assert all(math.isfinite(row["val_loss"]) for row in rows)


def test_pbt_gets_its_own_population_unless_one_is_given(tmp_path, cli, tiny_args):
    quick = ["--strategy", "pbt", "--generations", "1", "--set", "strategy.pbt_steps=2", "--quiet"]
    result = cli("run", *quick, "--out", str(tmp_path / "default"))
    assert result.returncode == 0, result.stderr
    assert tomllib.loads((tmp_path / "default" / "config.toml").read_text())["strategy"]["population_size"] == 8
    assert read_metrics(tmp_path / "default")[0]["evaluations"] == 8  # eight members trained and scored
    result = cli("run", *tiny_args, *quick, "--population-size", "6", "--out", str(tmp_path / "explicit"))
    assert result.returncode == 0, result.stderr
    assert tomllib.loads((tmp_path / "explicit" / "config.toml").read_text())["strategy"]["population_size"] == 6


def test_help_says_what_each_strategy_chooses(cli):
    result = cli("run", "--help", timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "cmaes population 24, vector genome over --params 'norm|head.bias'" in text
    assert "pbt population 8" in text and "members x 3 x the weight bytes" in text
    assert "anything you set (a flag, --set, a --config file) wins" in text
