"""Gradient baselines on a Hugging Face checkpoint (``--model hf:PATH``): adam (``evolm train``) and GRPO
on a task, with the checkpoint's own tokenizer, training the same parameter subset an evolution run
would evolve (the last block by default, every tensor with ``genome.params = "."``)."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file
from test_hf import corpus_text, make_checkpoint

from evolm.baselines.adam import run_adam
from evolm.baselines.grpo import run_grpo
from evolm.config import build_config
from evolm.errors import UsageError

FIRST_BLOCK = "model.transformer.h.0.attn.c_attn.weight"
LAST_BLOCK = "model.transformer.h.1.attn.c_attn.weight"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2-baselines")
    text_file = folder / "corpus.txt"
    text_file.write_text(corpus_text())
    make_checkpoint(folder, text_file)
    return folder


def task_config(checkpoint, *extra):
    return build_config(
        overrides=[
            ("model.name", f"hf:{checkpoint}"),
            ("model.context", 32),
            ("task.name", "arithmetic"),
            ("task.heldout", 16),
            ("threads", 1),
            *extra,
        ]
    )


def quiet(*args):
    pass


def changed(run_dir, checkpoint) -> dict[str, bool]:
    """Which of the two watched tensors the run changed, against the checkpoint's (start) weights."""
    from transformers import GPT2LMHeadModel

    start = GPT2LMHeadModel.from_pretrained(str(checkpoint), local_files_only=True).state_dict()
    final = load_file(str(run_dir / "model.safetensors"))
    return {name: not final[name].equal(start[name[len("model.") :]]) for name in (FIRST_BLOCK, LAST_BLOCK)}


def test_adam_trains_the_default_subset_or_every_tensor(checkpoint, tmp_path):
    summary = run_adam(task_config(checkpoint), tmp_path / "last", steps=3, log=quiet)
    assert summary["model"] == f"hf:{checkpoint}"
    assert summary["val_loss_final"] < summary["val_loss_initial"]
    assert changed(tmp_path / "last", checkpoint) == {FIRST_BLOCK: False, LAST_BLOCK: True}
    run_adam(task_config(checkpoint, ("genome.params", ".")), tmp_path / "all", steps=3, log=quiet)
    assert changed(tmp_path / "all", checkpoint) == {FIRST_BLOCK: True, LAST_BLOCK: True}


def test_grpo_runs_a_task_with_the_checkpoint_tokenizer(checkpoint, tmp_path):
    config = task_config(checkpoint, ("genome.params", "."), ("task.new_tokens", 4))
    summary = run_grpo(config, tmp_path / "grpo", steps=4, log_every=2, group_size=4, prompts=4, log=quiet)
    lines = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in lines] == [1, 3]
    assert summary["task"] == "arithmetic" and summary["task_fitness"] == "reward"
    assert 0.0 <= summary["reward_final"] <= 1.0
    assert summary["kl_from_initial"] >= 0.0
    # 4 prompts x 4 completions per step, each read by the sampler, one policy pass and the reference.
    assert summary["forward_tokens"] > 4 * 16 * 3


def test_params_matching_nothing_in_the_checkpoint_is_one_line(checkpoint, tmp_path):
    with pytest.raises(UsageError, match="genome.params: pattern 'no-such-tensor' matches no parameter"):
        run_adam(task_config(checkpoint, ("genome.params", "no-such-tensor")), tmp_path / "x", steps=1, log=quiet)


def test_cli_train_on_an_hf_folder(checkpoint, tmp_path):
    out = tmp_path / "train"
    command = [sys.executable, "-m", "evolm", "train", "--model", f"hf:{checkpoint}", "--task", "arithmetic"]
    command += ["--steps", "3", "--set", "genome.params=.", "--set", "model.context=32", "--set", "task.heldout=16"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "adam" and summary["generations"] == 3
    assert changed(out, checkpoint)[FIRST_BLOCK]
