"""``evolm compare --task`` as a real subprocess on a tiny model: the sweep, its winners, fresh seeds, one judge."""

import json

import pytest
import torch
from conftest import run_cli

from evolm.compare_tasks import ES_SIGMA, SWEEPS, TASK_METHODS, TUNING_SEED, method_settings
from evolm.config import build_config

TINY = [
    "model.width=32",
    "model.layers=1",
    "model.heads=2",
    "model.ff=64",
    "model.context=32",
    "data.batch_size=8",
    "data.val_sequences=16",
    "threads=1",
    "task.batch=8",
    "task.heldout=200",
    "task.kl_sequences=4",
]
SETTINGS = [arg for item in TINY for arg in ("--set", item)]
BUDGET_TOKENS = 6000


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny arithmetic start point: a few Adam steps on the task's own text."""
    out = tmp_path_factory.mktemp("start") / "adam"
    result = run_cli("train", "--task", "arithmetic", "--steps", "30", "--out", str(out), *SETTINGS)
    assert result.returncode == 0, result.stderr
    return out


def compare(out, start, *arguments):
    return run_cli(
        "compare",
        "--task",
        "arithmetic",
        "--init",
        str(start),
        "--budget-tokens",
        str(BUDGET_TOKENS),
        "--seeds",
        "1",
        "--out",
        str(out),
        *arguments,
        *SETTINGS,
        "--set",
        "strategy.population_size=8",
        timeout=600,
    )


def judged_by_hand(start, run_dir) -> dict:
    """The task's report of a run's final weights, from a runtime built here on the start weights."""
    from evolm.data import ByteTokenizer
    from evolm.sampling import load_run_model
    from evolm.tasks.runtime import TaskRuntime

    config = build_config(overrides=[*(tuple(i.split("=")) for i in TINY), ("task.name", "arithmetic")])
    runtime = TaskRuntime(config, load_run_model(start), ByteTokenizer(), torch.device("cpu"))
    runtime.load_corpus()
    return runtime.report(load_run_model(run_dir))


@pytest.mark.slow
def test_task_comparison_tunes_on_one_seed_then_runs_fresh_seeds(tmp_path, start):
    out = tmp_path / "cmp"
    result = compare(out, start, "--methods", "es,grpo")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "compare.json").read_text())
    assert document["task"] == "arithmetic" and document["tuned"] and document["tuning_seed"] == TUNING_SEED
    assert document["seeds"] == [TUNING_SEED + 1]  # fresh: never the tuning seed
    assert document["command"].startswith("evolm compare --task arithmetic")
    initial = json.loads((out / "es-seed1" / "summary.json").read_text())["reward_initial"]
    assert document["initial"]["reward"] == pytest.approx(initial)  # the judge agrees with the run on the start
    for method in ("es", "grpo"):
        knob, values = SWEEPS[method]
        entries = document["sweep"][method]
        assert [e["value"] for e in entries] == list(values)
        assert all(isinstance(e["reward"], float) and isinstance(e["kl_from_initial"], float) for e in entries)
        for entry in entries:
            assert (out / "sweep" / f"{method}-{entry['value']:g}" / "model.safetensors").exists()
        # The winner: the highest held-out reward, ties to the lower drift, then the earlier value.
        best = min(entries, key=lambda e: (-e["reward"], e["kl_from_initial"]))
        assert document["winners"][method] == {"knob": knob, "value": best["value"], "reward": best["reward"]}
        run_config = json.loads((out / f"{method}-seed1" / "summary.json").read_text())
        assert run_config["forward_tokens"] <= BUDGET_TOKENS * 1.6
    rows = {row["method"]: row for row in document["rows"]}
    assert list(rows) == ["es", "grpo"]
    for method, row in rows.items():
        assert row["value"] == document["winners"][method]["value"] and row["seeds"] == [1]
        assert row["forward_tokens"] > 0 and row["peak_rss_mb"] > 0
        assert row["train_reward"] is not None  # both train on the task's reward
        # One judge for all: the row is the task's report of the run's final weights, recomputed here.
        by_hand = judged_by_hand(start, out / f"{method}-seed1")
        assert row["reward"] == pytest.approx(by_hand["reward"]) and row["reward_std"] == 0.0
        assert row["kl_from_initial"] == pytest.approx(by_hand["kl_from_initial"], abs=1e-6)
        assert row["distinct_2"] == pytest.approx(by_hand["distinct_2"])
    # es ran with its winning learning rate, Adam, and the trained model's sigma.
    es_config = (out / "es-seed1" / "config.toml").read_text()
    assert f"learning_rate = {document['winners']['es']['value']}" in es_config and "sigma = 0.003" in es_config
    table = (out / "compare.md").read_text()
    assert "| es | learning_rate" in table and "| grpo | learning_rate" in table and "Sweep" in table
    assert "Best evolution, es," in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_task_comparison_without_tuning_runs_the_middle_values(tmp_path, start):
    out = tmp_path / "cmp"
    result = compare(out, start, "--methods", "adam,es", "--no-tune")
    assert result.returncode == 0, result.stderr
    document = json.loads((out / "compare.json").read_text())
    assert document["sweep"] == {} and not document["tuned"] and document["tuning_seed"] is None
    assert not (out / "sweep").exists()
    for row in document["rows"]:
        assert row["value"] == SWEEPS[row["method"]][1][1], row
        assert row["forward_tokens"] > 0
    rows = {row["method"]: row for row in document["rows"]}
    assert rows["adam"]["train_reward"] is None  # adam trains on the task's text, not its reward
    assert rows["adam"]["kl_from_initial"] > 0  # it moved
    assert "| adam | learning_rate 0.003 (likelihood) |" in (out / "compare.md").read_text()


def test_es_perturbs_a_trained_model_by_a_small_sigma():
    config = build_config(overrides=[("task.name", "arithmetic")])
    assert method_settings("es", 3e-3, config) == {"strategy.learning_rate": 3e-3, "strategy.sigma": ES_SIGMA}
    assert method_settings("ga", 1e-2, config) == {"strategy.sigma": 1e-2}


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--task", "chess", "--methods", "es"], "chess"),
        (["--task", "arithmetic", "--methods", "es,sgd"], "unknown method 'sgd'"),
        (["--task", "arithmetic", "--methods", "es,pbt"], "pbt cannot run a task"),
        (["--methods", "es,grpo"], "grpo optimises a task's reward and needs --task"),
        (["--task", "arithmetic", "--methods", "es", "--seeds", "0"], "--seeds"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, arguments, message):
    out = tmp_path / "cmp"
    result = run_cli("compare", *arguments, "--budget-seconds", "2", "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_every_task_method_has_a_three_value_sweep():
    assert set(SWEEPS) == set(TASK_METHODS)
    assert all(len(values) == 3 and list(values) == sorted(values) for _, values in SWEEPS.values())


def test_a_reward_that_fails_stops_before_any_run(tmp_path):
    """The judge is built first: a reward returning NaN is one line, exit 2, and no output folder."""
    module = tmp_path / "rewards.py"
    module.write_text("def nan(prompts, completions):\n    return [float('nan')] * len(completions)\n")
    out = tmp_path / "cmp"
    result = run_cli("compare", "--reward", f"{module}:nan", "--budget-seconds", "2", "--out", str(out), *SETTINGS)
    assert result.returncode == 2, result.stderr
    assert "returned nan" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()
