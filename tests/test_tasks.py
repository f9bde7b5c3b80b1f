"""The shipped tasks as plain strings: rewards, splits, seeds, the parse check and a user's reward's errors."""

from __future__ import annotations

import dataclasses
import math
import pickle
import sysconfig
from pathlib import Path

import pytest

from evolm.config import TaskConfig, build_config
from evolm.data import embedded_corpus_text
from evolm.errors import UsageError
from evolm.tasks import TASK_FITNESS, TASKS, make_task, task_names
from evolm.tasks.arithmetic import (
    HELDOUT_PROBLEMS,
    answers,
    arithmetic_task,
    exact_reward,
    has_carry,
    parse_prompt,
    partial_reward,
)
from evolm.tasks.python_lines import parse_reward, parses_as_line, python_lines_task, real_lines
from evolm.tasks.self_feedback import WINDOW_CHARACTERS, SelfFeedbackReward, build_self_feedback
from evolm.textstats import diversity_score


def settings(**fields) -> TaskConfig:
    return dataclasses.replace(TaskConfig(), **fields)


def negative_length(prompts, completions):
    """A stand-in reference scorer with known values: longer completions score lower."""
    return [-float(len(c)) for c in completions]


# -- arithmetic --------------------------------------------------------------------------------------
def test_arithmetic_rewards_exact_partial_and_answers():
    prompts = ["07+35="] * 6
    completions = ["042", "042\n13+", " 042 ", "043", "0421", ""]
    assert answers(prompts[:1]) == ["042"]
    assert exact_reward(prompts, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert partial_reward(prompts, completions) == pytest.approx([1.0, 1.0, 1.0, 2 / 3, 3 / 4, 0.0])
    assert partial_reward(["99+99="], ["198"]) == [1.0] and partial_reward(["99+99="], ["098"]) == [
        pytest.approx(2 / 3)
    ]
    with pytest.raises(ValueError, match="AB\\+CD="):
        parse_prompt("7+35=")


def test_arithmetic_splits_are_disjoint_and_cover_the_carry_problems():
    task = arithmetic_task(0)
    lines = task.corpus_text.splitlines()
    corpus = {line[:6] for line in lines}
    for line in lines[:200]:  # every corpus line states a true sum
        assert line[6:] == answers([line[:6]])[0]
    train, heldout = set(task.train_prompts), set(task.heldout_prompts)
    assert len(task.heldout_prompts) == HELDOUT_PROBLEMS >= 1000 and len(heldout) == len(task.heldout_prompts)
    assert not (corpus & train) and not (corpus & heldout) and not (train & heldout)
    assert all(has_carry(*parse_prompt(p)) for p in train | heldout)
    # No held-out problem has its swapped twin (the same answer) in the training prompts or the corpus.
    swapped = {"{1:02d}+{0:02d}=".format(*parse_prompt(p)) for p in heldout}
    assert swapped == heldout and not (swapped & train) and not (swapped & corpus)
    carry_in_corpus = {p for p in corpus if has_carry(*parse_prompt(p))}
    assert len(carry_in_corpus) == task.info["corpus_carry_problems"]
    assert len(carry_in_corpus) + len(train) + len(heldout) == 4500
    assert len(corpus) - len(carry_in_corpus) == 5500  # every no-carry problem is in the training text
    assert task.fitness_kinds() == ("reward", "partial", "logprob")
    assert task.stop == "\n" and task.new_tokens == 4 and task.info["heldout_prompts"] == HELDOUT_PROBLEMS


def test_arithmetic_is_reproducible_from_its_seed_and_heldout_does_not_depend_on_the_share():
    first, again, other = arithmetic_task(0), arithmetic_task(0), arithmetic_task(1)
    assert first.corpus_text == again.corpus_text and first.train_prompts == again.train_prompts
    assert first.heldout_prompts != other.heldout_prompts and first.corpus_text != other.corpus_text
    assert arithmetic_task(0, 0.0).heldout_prompts == arithmetic_task(0, 0.05).heldout_prompts
    assert arithmetic_task(0, 0.0).info["corpus_carry_problems"] == 0
    built = make_task(settings(name="arithmetic", seed=1), "", None)
    assert built.train_prompts == other.train_prompts


# -- python-lines ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line",
    [
        "return x",
        "x = foo(1, key=[2, 3])",
        "if x > 1:",
        "for i in range(3): print(i)",
        "elif y:",
        "else:",
        "except (KeyError, ValueError) as error:",
        "finally:",
        "try:",
        "@functools.cache",
        "case [first, *rest]:",
        "async def f(x):",
        "class A(B, metaclass=M):",
        '"""A docstring."""',
    ],
)
def test_python_lines_accepts_real_lines(line):
    assert parses_as_line(line)


@pytest.mark.parametrize("line", ["", "def f(", "x = (", "if x", "return x +", "x = 1\ny = 2", "x = (\r1)", "else"])
def test_python_lines_refuses_unfinished_lines(line):
    assert not parses_as_line(line)


def test_python_lines_reward_task_and_real_line_check():
    assert parse_reward(["def f(", "x = ("], ["x):\ny = 2", "1"]) == [1.0, 0.0]
    assert real_lines("def f(x):  # comment\n    return (x +\n        1)\n") == [(0, "def f(x):")]
    task = python_lines_task(0)
    assert 500_000 <= task.info["corpus_bytes"] <= 1_000_000
    assert task.info["heldout_real_lines_parse"] >= 0.98  # the checker accepts the real lines it cuts
    assert len(task.train_prompts) >= 2000 and len(task.heldout_prompts) >= 256
    assert not set(task.train_prompts) & set(task.heldout_prompts)
    assert not any(parses_as_line(p) for p in task.train_prompts[:300] + task.heldout_prompts[:300])
    assert all(3 <= len(p) <= 20 for p in task.heldout_prompts)
    # The held-out files close the corpus, and held-out prompts start lines of its last 10% (validation).
    last_file = Path(sysconfig.get_paths()["stdlib"]) / task.info["heldout_files"][-1]
    assert task.corpus_text.endswith(last_file.read_text(encoding="utf-8"))
    tail = task.corpus_text[int(len(task.corpus_text) * 0.9) :]
    assert all(p in tail for p in task.heldout_prompts[:100])
    assert task.info["heldout_files"] and task.info["files"] > len(task.info["heldout_files"])
    assert make_task(settings(name="python-lines"), "", None).heldout_prompts == task.heldout_prompts
    assert python_lines_task(1).heldout_prompts != task.heldout_prompts


# -- self-feedback -----------------------------------------------------------------------------------
def test_self_feedback_reward_is_reference_plus_own_and_shared_diversity():
    reward = SelfFeedbackReward(negative_length, diversity=0.5)
    prompts = ["a", "b", "c"]
    diverse = ["the cat", "a dog ran", "xyz"]
    values = reward(prompts, diverse)
    shared = diversity_score([list(c.encode()) for c in diverse])
    bonuses = [0.5 * math.log(256) * (diversity_score([list(c.encode())]) + shared) / 2 for c in diverse]
    assert values == pytest.approx([-7 + bonuses[0], -9 + bonuses[1], -3 + bonuses[2]])
    # Within one call (a group of completions of one prompt), a looping completion scores lower.
    looped, varied = SelfFeedbackReward(lambda p, c: [-1.0] * len(c), 1.0)(["a", "a"], ["abababab", "abcdefgh"])
    assert looped < varied
    # Collapsing onto one string loses to different answers that the scorer likes as much.
    same_score = SelfFeedbackReward(lambda p, c: [-1.0] * len(c), diversity=1.0)
    collapsed, different = same_score(prompts, ["the cat"] * 3), same_score(prompts, diverse)
    assert len(set(collapsed)) == 1 and max(collapsed) < min(different)
    assert SelfFeedbackReward(negative_length, 0.0)(prompts, diverse) == [-7.0, -9.0, -3.0]
    with pytest.raises(RuntimeError, match="frozen initial model"):
        SelfFeedbackReward(None, 1.0)(prompts, diverse)


def test_self_feedback_windows_split_and_seed():
    text = embedded_corpus_text()
    task = build_self_feedback(settings(name="self-feedback", seed=3), text, negative_length)
    boundary = int(len(text) * 0.9)
    assert len(task.train_prompts) == 4096 and len(task.heldout_prompts) == 256
    assert all(len(p) == WINDOW_CHARACTERS for p in task.train_prompts + task.heldout_prompts)
    assert all(p in text[boundary:] for p in task.heldout_prompts[:50])
    assert task.stop is None and task.new_tokens == 32 and task.fitness_kinds() == ("reward",)
    again = build_self_feedback(settings(name="self-feedback", seed=3), text, negative_length)
    assert again.train_prompts == task.train_prompts
    assert build_self_feedback(settings(seed=4), text, None).train_prompts != task.train_prompts
    with pytest.raises(UsageError, match="too short"):
        build_self_feedback(settings(), "tiny text", None)


# -- a user's reward ---------------------------------------------------------------------------------
USER_MODULE = """
def length(prompts, completions):
    return [len(c) for c in completions]

def boom(prompts, completions):
    raise ValueError("bad input")

def short(prompts, completions):
    return [1.0]

def not_a_number(prompts, completions):
    return [float("nan")] * len(completions)

def words(prompts, completions):
    return ["many"] * len(completions)

value = 3
"""


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    (tmp_path / "evolm_test_reward.py").write_text(USER_MODULE)
    (tmp_path / "broken_reward.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n\n" for i in range(20)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def user_task(**fields):
    return make_task(settings(**fields), embedded_corpus_text(), None)


def test_user_reward_module_and_file(user_dir):
    task = user_task(reward="evolm_test_reward:length", prompts="prompts.txt")
    assert task.name == "reward" and task.reward(["p", "q"], ["ab", ""]) == [2.0, 0.0]
    assert len(task.train_prompts) == 18 and len(task.heldout_prompts) == 2
    assert sorted(task.train_prompts + task.heldout_prompts) == sorted(f"prompt {i}" for i in range(20))
    by_file = user_task(name="reward", reward=f"{user_dir / 'evolm_test_reward.py'}:length")
    assert by_file.reward(["p"], ["abc"]) == [3.0]
    assert len(by_file.train_prompts) == 4096 and len(by_file.heldout_prompts) == 256  # corpus windows
    shipped = pickle.loads(pickle.dumps(task.reward))  # as Ray ships it: the spec, imported again
    assert shipped(["p"], ["abcd"]) == [4.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:f", "reward no_such_module_xyz:f: cannot import no_such_module_xyz: ModuleNotFoundError"),
        ("broken_reward:f", "cannot import broken_reward: ModuleNotFoundError"),
        ("missing.py:f", "reward missing.py:f: file .*missing.py does not exist"),
        ("evolm_test_reward:absent", "evolm_test_reward has no function 'absent'"),
        ("evolm_test_reward:value", "value is a int, not a function"),
        ("no-colon", "config field task.reward must be module:function"),
    ],
)
def test_user_reward_that_cannot_load_is_one_line(user_dir, spec, message):
    with pytest.raises(UsageError, match=message) as error:
        user_task(reward=spec)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("boom", "reward evolm_test_reward:boom raised ValueError: bad input"),
        ("short", "reward evolm_test_reward:short returned 1 values for 2 completions"),
        ("not_a_number", "reward evolm_test_reward:not_a_number returned nan"),
        ("words", "reward evolm_test_reward:words must return a list of 2 numbers"),
    ],
)
def test_user_reward_bad_calls_are_one_line(user_dir, function, message):
    task = user_task(reward=f"evolm_test_reward:{function}", prompts="prompts.txt")
    with pytest.raises(UsageError, match=message):
        task.reward(["p", "q"], ["a", "b"])


def test_user_reward_callable_and_prompt_files(user_dir):
    task = make_task(settings(), embedded_corpus_text(), None, reward_function=negative_length)
    assert task.name == "reward" and task.reward(["p"], ["abc"]) == [-3.0]
    assert "negative_length" in task.info["reward_function"]
    assert pickle.loads(pickle.dumps(task.reward))(["p"], ["ab"]) == [-2.0]
    (user_dir / "empty.txt").write_text("\n  \n")
    with pytest.raises(UsageError, match="task.prompts: file empty.txt holds no prompts"):
        user_task(reward="evolm_test_reward:length", prompts="empty.txt")
    with pytest.raises(UsageError, match="task.prompts: file nowhere.txt does not exist"):
        user_task(reward="evolm_test_reward:length", prompts="nowhere.txt")
    with pytest.raises(UsageError, match="task 'reward', but task.name is 'arithmetic'"):
        make_task(settings(name="arithmetic"), "", None, reward_function=negative_length)


# -- registry and validation -------------------------------------------------------------------------
def test_registry_names_and_fitness_kinds_match_the_built_tasks(user_dir):
    assert task_names() == ("self-feedback", "arithmetic", "python-lines", "reward") == tuple(TASKS)
    with pytest.raises(UsageError, match=r"config field task.name: unknown task 'x' \(choose from self-feedback, "):
        make_task(settings(name="x"), "", None)
    text = embedded_corpus_text()
    for name in task_names():
        fields = {"name": name, "reward": "evolm_test_reward:length" if name == "reward" else ""}
        assert make_task(settings(**fields), text, negative_length).fitness_kinds() == TASK_FITNESS[name]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task.name", "nope", "config field task.name: unknown task 'nope'"),
        ("task.batch", 0, "config field task.batch must be positive"),
        ("task.heldout", -1, "config field task.heldout"),
        ("task.new_tokens", -2, "config field task.new_tokens"),
        ("task.decoding", "beam", "config field task.decoding must be one of greedy, sample"),
        ("task.normalise", "minmax", "config field task.normalise must be one of zscore, ranks, none"),
        ("task.fitness", "loss", "config field task.fitness must be one of reward, partial, logprob"),
        ("task.kl_sequences", 0, "config field task.kl_sequences must be positive"),
        ("task.diversity", float("nan"), "config field task.diversity must be a finite number"),
        ("task.diversity", -1.0, "config field task.diversity"),
        ("task.reward", "nocolon", "config field task.reward must be module:function"),
    ],
)
def test_validate_task_config_names_the_field(key, value, message):
    with pytest.raises(UsageError, match=message):
        build_config(None, [("task.name", "self-feedback"), (key, value)] if key != "task.reward" else [(key, value)])


def test_validate_task_config_fitness_per_task_and_reward_name():
    assert build_config(None, [("task.name", "arithmetic"), ("task.fitness", "logprob")]).task.fitness == "logprob"
    with pytest.raises(UsageError, match="task.fitness: task python-lines offers reward, not 'partial'"):
        build_config(None, [("task.name", "python-lines"), ("task.fitness", "partial")])
    assert build_config(None, [("task.reward", "mine:score")]).task.name == "reward"
    with pytest.raises(UsageError, match="task.reward is for task 'reward', but task.name is 'arithmetic'"):
        build_config(None, [("task.name", "arithmetic"), ("task.reward", "mine:score")])
    assert build_config(None, []).task.name == ""  # no task: nothing to check beyond the fields
