"""GRPO and RLOO on a task: their advantages, the k3 KL, the completion mask, and short real runs on a
tiny model (run files, task report, repeatability, bad input); adam with a task trains on the task's text."""

import json
import math

import pytest
import torch

from evolm.baselines import BASELINES
from evolm.baselines.grpo import group_advantages, grpo_loss
from evolm.baselines.policy_gradient import completion_mask, k3_kl, token_log_probs
from evolm.baselines.rloo import leave_one_out_advantages
from evolm.config import build_config
from evolm.errors import UsageError
from evolm.models import build_model

# The TINY sizes of tests/conftest.py, as config overrides; a short held-out list keeps the report quick.
TINY = [
    ("model.width", 32),
    ("model.layers", 1),
    ("model.heads", 2),
    ("model.ff", 64),
    ("model.context", 32),
    ("data.val_sequences", 16),
    ("threads", 1),
]
ARITHMETIC = [*TINY, ("task.name", "arithmetic"), ("task.heldout", 64), ("task.kl_sequences", 4)]
# Self-feedback's dense reward moves the policy from the first step (16-byte prompts, 8 new tokens).
SELF_FEEDBACK = [*TINY, ("task.name", "self-feedback"), ("task.new_tokens", 8), ("task.heldout", 32)]
QUICK = {"steps": 3, "log_every": 2, "prompts": 4, "group_size": 4, "learning_rate": 1e-2}
WALL_CLOCK = {"wall_seconds", "compute_seconds"}


def quiet(message):
    pass


def metrics_of(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def without_clock(rows):
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in rows]


# -- the pieces, on hand-made numbers --------------------------------------------------------------


def test_group_advantages_are_rewards_normalised_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    advantages = group_advantages(rewards)
    unit = 0.5 / (math.sqrt(1 / 3) + 1e-4)  # (1 - 0.5) over the sample std of (1, 0, 0, 1) plus the guard
    assert advantages[0].tolist() == pytest.approx([unit, -unit, -unit, unit])
    assert advantages[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a group of equal rewards teaches nothing
    assert advantages[2].tolist() == pytest.approx([2.25 / (1.5 + 1e-4)] + [-0.75 / (1.5 + 1e-4)] * 3)


def test_leave_one_out_baseline_is_the_mean_of_the_other_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    advantages = leave_one_out_advantages(rewards)
    assert advantages[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert advantages[1].tolist() == pytest.approx([3 - 5 / 3, 1 - 7 / 3, 2 - 2, 2 - 2])
    assert leave_one_out_advantages(torch.tensor([[5.0, 1.0]])).tolist() == [[4.0, -4.0]]


def test_k3_kl_is_zero_for_the_same_model_and_positive_for_another():
    assert k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0 + math.log(2)])).item() == pytest.approx(1 - math.log(2))
    config = build_config(overrides=TINY)
    sequence = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))
    model, other = build_model(config.model, 0).eval(), build_model(config.model, 1).eval()
    with torch.no_grad():
        mine = token_log_probs(model, sequence, 5, 1.0)
        same = k3_kl(mine, token_log_probs(build_model(config.model, 0).eval(), sequence, 5, 1.0))
        different = k3_kl(mine, token_log_probs(other, sequence, 5, 1.0))
    assert mine.shape == (3, 7)
    assert same.abs().max().item() == 0.0
    assert (different >= 0).all() and different.mean().item() > 1e-4


def test_mask_keeps_the_first_stop_token_and_drops_what_follows():
    tokens = torch.tensor([[1, 2, 10, 3, 10], [10, 5, 5, 5, 5], [1, 2, 3, 4, 5]])
    assert completion_mask(tokens, [10]).tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True] * 5,
    ]
    two = torch.tensor([[1, 10, 10, 4], [10, 1, 10, 10], [10, 1, 10, 1]])
    assert completion_mask(two, [10, 10]).tolist() == [
        [True, True, False, False],
        [True, True, True, False],
        [True] * 4,
    ]
    assert completion_mask(tokens, []).all()


def test_grpo_clips_the_ratio_only_where_it_would_gain():
    old = torch.zeros(1, 2)
    log_probs = old + math.log(1.5)
    mask = torch.ones(1, 2)
    gain = grpo_loss(log_probs, old, old, torch.tensor([1.0]), mask, beta=0.0, epsilon=0.2)
    loss = grpo_loss(log_probs, old, old, torch.tensor([-1.0]), mask, beta=0.0, epsilon=0.2)
    assert gain.item() == pytest.approx(-1.2)  # clipped at 1 + epsilon
    assert loss.item() == pytest.approx(1.5)  # a worse action's ratio is never clipped in its favour
    # Padding after the stop counts for nothing; the KL term adds beta * k3 per completion token.
    masked = grpo_loss(old, old, old + math.log(2), torch.tensor([0.0]), torch.tensor([[1.0, 0.0]]), 0.5, 0.2)
    assert masked.item() == pytest.approx(0.5 * (1 - math.log(2)))


# -- real runs on the arithmetic task --------------------------------------------------------------


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_run_on_a_task_writes_the_task_report_and_repeats_itself(method, tmp_path):
    config = build_config(overrides=SELF_FEEDBACK)
    summary = BASELINES[method](config, tmp_path / "a", log=quiet, **QUICK)
    assert summary["generations"] == 3 and summary["task"] == "self-feedback"
    for key in ("reward_initial", "reward_final", "kl_from_initial", "kl_from_initial_initial", "distinct_2_final"):
        assert math.isfinite(summary[key]), key
    assert summary["kl_from_initial_initial"] == 0.0 and summary["kl_from_initial"] > 0.0  # it moved
    assert summary["reward_final"] != summary["reward_initial"]
    assert summary["task_fitness"] == "reward" and summary["task_decoding"] == "sample"
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["reward_final"] == summary["reward_final"]
    rows = metrics_of(tmp_path / "a")
    assert [row["generation"] for row in rows] == [1, 2]
    assert {"train_reward", "train_kl", "informative_groups", "completion_tokens", "reward"} <= set(rows[0])
    assert rows[0]["completion_tokens"] == 8.0  # self-feedback has no stop: every new token counts
    # Per step, 16 rows of 16-byte prompts: generation 16 + 7, policy and reference passes 16 + 8 - 1,
    # and the frozen scorer's reading of every completion (the reward's own forwards).
    assert summary["forward_tokens"] == 3 * 16 * (23 + 23 + 23 + 23)
    BASELINES[method](config, tmp_path / "b", log=quiet, **QUICK)
    assert without_clock(metrics_of(tmp_path / "b")) == without_clock(rows)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_arithmetic_completions_end_at_the_newline(method, tmp_path):
    summary = BASELINES[method](build_config(overrides=ARITHMETIC), tmp_path / "run", log=quiet, **QUICK)
    rows = metrics_of(tmp_path / "run")
    assert 1.0 <= rows[0]["completion_tokens"] <= 4.0  # up to three digits and the newline
    assert summary["corpus"] == "task arithmetic" and 0.0 <= summary["reward_final"] <= 1.0
    # Per step, 16 rows of a 6-byte prompt: generation 6 + 3, two passes of at most 6 + 4 - 1 tokens.
    assert 0 < summary["forward_tokens"] <= 3 * 16 * (9 + 9 + 9)


def test_grpo_with_several_updates_per_batch_uses_the_old_policy(tmp_path):
    config = build_config(overrides=SELF_FEEDBACK)
    once = BASELINES["grpo"](config, tmp_path / "one", log=quiet, **{**QUICK, "steps": 2})
    twice = BASELINES["grpo"](config, tmp_path / "two", log=quiet, iterations=2, **{**QUICK, "steps": 2})
    assert twice["forward_tokens"] > once["forward_tokens"]  # a second policy pass per step
    assert twice["kl_from_initial"] != once["kl_from_initial"]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_without_a_task_one_line_names_the_field_and_writes_nothing(method, tmp_path):
    with pytest.raises(UsageError, match="task.name") as error:
        BASELINES[method](build_config(overrides=TINY), tmp_path / "run", log=quiet, steps=1)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_prompt_and_completion_must_fit_the_context(tmp_path):
    config = build_config(overrides=[*ARITHMETIC, ("model.context", 8)])  # 6 + 4 - 1 = 9 > 8
    with pytest.raises(UsageError, match="model.context") as error:
        BASELINES["grpo"](config, tmp_path / "run", log=quiet, steps=1)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_bad_options_are_one_line(tmp_path):
    config = build_config(overrides=ARITHMETIC)
    for method, options in [("grpo", {"group_size": 1}), ("rloo", {"prompts": 0}), ("grpo", {"prompts": 64})]:
        with pytest.raises(UsageError) as error:
            BASELINES[method](config, tmp_path / "run", log=quiet, steps=1, **options)
        assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_adam_with_a_task_trains_on_the_tasks_own_text(tmp_path):
    config = build_config(overrides=ARITHMETIC)
    messages = []
    summary = BASELINES["adam"](config, tmp_path / "adam", log=messages.append, steps=20, batch_size=8, log_every=10)
    assert summary["corpus"] == "task arithmetic" and summary["task"] == "arithmetic"
    assert summary["task_fitness"] == "likelihood"
    assert any("corpus task arithmetic" in message for message in messages)
    assert summary["val_loss_final"] < summary["val_loss_initial"]  # validation windows are the task's text
    for key in ("reward_initial", "reward_final", "kl_from_initial"):
        assert math.isfinite(summary[key]), key
