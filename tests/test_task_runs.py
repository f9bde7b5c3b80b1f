"""Evolution on tasks: per-prompt normalisation, the whole loop through the CLI, backends, bad input."""

import json
import math

import numpy as np
import pytest
from conftest import TINY, read_metrics, run_cli, without_wall_clock

from evolm.config import build_config
from evolm.engine import run
from evolm.tasks.fitness import PromptScores, finish_prompt_scores

# A tiny model with room for a prompt and its completion; few prompts per generation to stay fast.
# report_every=1: these tests check the task's report (held-out reward, drift) on every generation.
TASK_TINY = [*TINY, "--set", "task.batch=8", "--set", "task.heldout=64", "--set", "report_every=1"]


def test_zscore_per_prompt_ignores_prompts_everyone_answers_alike():
    # Prompt 0: everyone right (no information); prompt 1: only individual 2 right.
    results = [PromptScores([1.0, 0.0], [1.0, 0.0], "zscore") for _ in range(3)]
    results[2] = PromptScores([1.0, 1.0], [1.0, 1.0], "zscore")
    fitnesses, metrics = finish_prompt_scores(results)
    values = [f[0] for f in fitnesses]
    std = np.std([0.0, 0.0, 1.0])
    assert values[0] == pytest.approx(-(1 / 3) / std / 2)
    assert values[2] == pytest.approx((2 / 3) / std / 2)
    assert metrics["train_reward"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert metrics["train_reward_best"] == 1.0


def test_centred_ranks_per_prompt_tie_equal_values():
    results = [PromptScores(values, values, "ranks") for values in ([0.0, 5.0], [0.0, 1.0], [1.0, 3.0])]
    fitnesses, _ = finish_prompt_scores(results)
    # Prompt 0: ranks (0.5, 0.5, 2) / 2 - 0.5; prompt 1: (2, 0, 1) / 2 - 0.5.
    expected = [((-0.25) + 0.5) / 2, ((-0.25) + (-0.5)) / 2, (0.5 + 0.0) / 2]
    assert [f[0] for f in fitnesses] == pytest.approx(expected)


def test_a_diverged_individual_is_worst_and_left_out_of_the_statistics():
    results = [PromptScores([1.0], [1.0], "none"), PromptScores([], [], "none"), PromptScores([0.0], [0.0], "none")]
    fitnesses, metrics = finish_prompt_scores(results)
    assert fitnesses[1] == (-math.inf,)
    assert [fitnesses[0][0], fitnesses[2][0]] == [1.0, 0.0]
    assert metrics["train_reward"] == 0.5


@pytest.fixture(scope="module")
def start_point(tmp_path_factory):
    """A start point trained with Adam on the arithmetic task's own text, by step count."""
    out = tmp_path_factory.mktemp("start") / "adam"
    overrides = [item for pair in zip(TINY[0:10:2], TINY[1:10:2]) for item in pair]  # the model.* settings
    # Few held-out prompts: the start's own reports (every 10 steps) are not what the tests check.
    heldout = ["--set", "task.heldout=64"]
    result = run_cli("train", "--task", "arithmetic", *overrides, *heldout, "--steps", "40", "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "adam" and summary["generations"] == 40
    return out


def _task_run(start_point, out, *extra):
    return run_cli(
        "run", *TASK_TINY, "--task", "arithmetic", "--init", str(start_point), "--generations", "3",
        "--out", str(out), "--quiet", *extra,
    )  # fmt: skip


def test_evolm_run_on_a_task_reports_reward_drift_and_examples(start_point, tmp_path):
    result = _task_run(start_point, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "arithmetic" and summary["task_fitness"] == "reward"
    assert summary["task_normalise"] == "zscore" and summary["task_decoding"] == "greedy"
    assert 0.0 <= summary["reward_initial"] <= 1.0 and 0.0 <= summary["reward_final"] <= 1.0
    assert summary["kl_from_initial_initial"] == pytest.approx(0.0, abs=1e-6)
    assert summary["kl_from_initial"] == summary["kl_from_initial_final"] >= 0.0
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 3 and all({"reward", "train_reward", "kl_from_initial", "val_loss"} <= set(r) for r in rows)
    # The held-out prompts with the model's completions, before and after.
    assert "before:" in result.stdout and "after:" in result.stdout and "+" in result.stdout


def _engine_run(start_point, out, *extra):
    """The same run in this process (no interpreter start-up): ``extra`` are (key, value) overrides."""
    settings = [
        (TINY[i + 1].split("=", 1)[0], TINY[i + 1].split("=", 1)[1]) for i, f in enumerate(TINY) if f == "--set"
    ]
    settings += [("strategy.population_size", "16"), ("generations", "3"), ("task.name", "arithmetic")]
    settings += [("task.batch", "8"), ("task.heldout", "64"), ("model.init", str(start_point)), *extra]
    settings += [("report_every", "1")]  # the report on every generation, as TASK_TINY
    summary = run(build_config(overrides=settings), out_dir=out, progress=False, log=lambda *args: None)
    return summary, read_metrics(out)


def test_the_same_seed_repeats_and_threads_match_in_process(start_point, tmp_path):
    _, expected = _engine_run(start_point, tmp_path / "a")
    _, again = _engine_run(start_point, tmp_path / "b")
    _, threads = _engine_run(start_point, tmp_path / "c", ("evaluator.workers", "2"), ("evaluator.backend", "threads"))
    assert without_wall_clock(again) == without_wall_clock(expected)
    ignore = lambda rows: [{k: v for k, v in r.items() if not k.startswith("evaluator_")} for r in rows]  # noqa: E731
    assert ignore(without_wall_clock(threads)) == ignore(without_wall_clock(expected))


@pytest.mark.parametrize(
    "strategy, fitness", [("ga", "partial"), ("cmaes", "logprob"), ("nsga2", "reward"), ("pbt", "reward")]
)
def test_every_strategy_runs_a_task(start_point, tmp_path, strategy, fitness):
    extra = [("strategy.name", strategy), ("task.fitness", fitness), ("strategy.population_size", "4")]
    if strategy == "pbt":
        extra.append(("strategy.pbt_steps", "2"))
    summary, rows = _engine_run(start_point, tmp_path / "run", *extra)
    assert summary["task_fitness"] == fitness and len(rows) == 3
    assert summary["task_normalise"] == ("zscore" if strategy == "cmaes" else "none")
    assert all(math.isfinite(row["reward"]) for row in rows)


@pytest.mark.parametrize("strategy, genome", [("es", "lowrank"), ("ga", "vector")])
def test_every_genome_runs_a_task(start_point, tmp_path, strategy, genome):
    extra = [("strategy.name", strategy), ("genome.name", genome), ("strategy.population_size", "4")]
    extra += [("task.normalise", "ranks"), ("genome.params", "norm|bias")]
    summary, rows = _engine_run(start_point, tmp_path / "run", *extra)
    assert summary["genome"] == genome and len(rows) == 3
    assert summary["task_normalise"] == ("ranks" if strategy == "es" else "none")
    assert all(math.isfinite(row["reward"]) and row["forward_tokens"] > 0 for row in rows)


def test_a_users_reward_from_a_file_with_prompts(tmp_path):
    (tmp_path / "my_reward.py").write_text(
        "def vowels(prompts, completions):\n    return [sum(c in 'aeiou' for c in text) / 32 for text in completions]\n"
    )
    (tmp_path / "prompts.txt").write_text("".join(f"Question {i}:\n" for i in range(40)))
    result = run_cli(
        "run", *TASK_TINY, "--reward", str(tmp_path / "my_reward.py") + ":vowels", "--prompts",
        str(tmp_path / "prompts.txt"), "--generations", "2", "--out", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "reward" and 0.0 <= summary["reward_final"] <= 1.0


@pytest.mark.parametrize(
    "body, expected",
    [
        ("def bad(prompts, completions):\n    raise ValueError('no')\n", "raised ValueError: no"),
        ("def bad(prompts, completions):\n    return [1.0]\n", "returned 1 values"),
        ("def bad(prompts, completions):\n    return [float('nan')] * len(prompts)\n", "nan"),
    ],
)
def test_a_broken_reward_is_one_line_before_anything_is_written(tmp_path, body, expected):
    (tmp_path / "broken.py").write_text(body)
    out = tmp_path / "run"
    result = run_cli("run", *TASK_TINY, "--reward", str(tmp_path / "broken.py") + ":bad", "--out", str(out), "--quiet")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # the reward is called once before anything is written


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--task", "poetry"], "task.name"),
        (["--reward", "no_such_module_xyz:f"], "no_such_module_xyz"),
        (["--task", "self-feedback", "--set", "task.fitness=logprob"], "task.fitness"),
        (["--task", "arithmetic", "--set", "task.normalise=softmax"], "task.normalise"),
    ],
)
def test_bad_task_settings_are_one_line(tmp_path, extra, expected):
    result = run_cli("run", *TASK_TINY, *extra, "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
