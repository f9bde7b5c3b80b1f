"""Hugging Face causal LMs from a local folder (``hf:PATH``): a tiny GPT-2 built from GPT2Config and a
byte-level BPE tokenizer trained here, saved with save_pretrained, then evolved; cached generation
matches uncached sampling; tied weights survive checkpoints; runs the ``evolm`` command started resume from
Python. The Hugging Face extra is part of the test install (pip install -e '.[dev,hf]'): nothing here skips."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, read_metrics, without_wall_clock
from test_api import Interrupted, cli_run_killed_after_checkpoints, interrupt_after_checkpoints, rows
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import evolm.api as api
from evolm.assembly import hf_worker
from evolm.config import build_config
from evolm.errors import UsageError
from evolm.models.base import sample_next
from evolm.models.hf import HFCausalLM, default_params, load_hf

VOCAB = 320
SETTINGS = dict(
    context=32,
    batch_size=8,
    val_sequences=16,
    population_size=16,
    generations=10,
    threads=1,
    checkpoint_every=0,
    learning_rate=0.02,
)


def corpus_text() -> str:
    from pydoc_data import topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))[:60_000]


def make_checkpoint(folder, text_file, layers=2, width=64, heads=4, positions=128, vocab=VOCAB):
    """A GPT-2 from GPT2Config and a byte-level BPE tokenizer trained on ``text_file``, saved together."""
    bpe = ByteLevelBPETokenizer()
    bpe.train(
        [str(text_file)], vocab_size=vocab, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False
    )
    bpe.save(str(folder / "bpe.json"))
    # transformers 5: wrap the trained tokenizer file; GPT2TokenizerFast from vocab/merges gives one token.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "bpe.json"), eos_token="<|endoftext|>")
    assert len(tokenizer) == vocab, len(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=heads,
        n_positions=positions,
        vocab_size=len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    text_file = folder / "corpus.txt"
    text_file.write_text(corpus_text())
    make_checkpoint(folder, text_file)
    return folder, text_file


def quiet(*args):
    pass


def test_checkpoint_loads_with_its_tokenizer(checkpoint):
    folder, _ = checkpoint
    model, tokenizer = load_hf(f"hf:{folder}")
    assert isinstance(model, HFCausalLM)
    assert tokenizer.vocab_size == VOCAB
    ids = tokenizer.encode("def function(argument):")
    assert 1 < len(ids) < len("def function(argument):")  # merges work: fewer tokens than bytes
    assert tokenizer.decode(ids) == "def function(argument):"
    logits = model(ids.unsqueeze(0))
    assert logits.shape == (1, len(ids), VOCAB)
    assert default_params(model) == r"^transformer\.h\.1\.(attn|mlp)\."


def test_cached_generation_matches_uncached_sampling(checkpoint):
    folder, _ = checkpoint
    model, tokenizer = load_hf(folder)
    prompt = tokenizer.encode("The import statement").unsqueeze(0).repeat(2, 1)
    cached = model.generate(prompt, 12, 1.0, torch.Generator().manual_seed(3))
    # The same seeded draws with a full re-encode per token: the cache changes nothing but the cost.
    generator = torch.Generator().manual_seed(3)
    sequence = prompt
    with torch.no_grad():
        for _ in range(12):
            token = sample_next(model(sequence)[:, -1], 1.0, generator)
            sequence = torch.cat([sequence, token], dim=1)
    assert torch.equal(cached, sequence[:, prompt.shape[1] :])
    assert torch.equal(cached, model.generate(prompt, 12, 1.0, torch.Generator().manual_seed(3)))


def test_generation_past_the_context_stays_cached_and_bounded(checkpoint):
    folder, _ = checkpoint
    model, tokenizer = load_hf(folder)
    out = model.generate(
        tokenizer.encode("x").unsqueeze(0), 200, 1.0, torch.Generator().manual_seed(0)
    )  # > 128 positions
    assert out.shape == (1, 200)


def test_tied_weights_appear_once_and_load_back(checkpoint):
    folder, _ = checkpoint
    model, _ = load_hf(folder)
    state = model.state_dict()
    assert "model.lm_head.weight" not in state and "model.transformer.wte.weight" in state
    other, _ = load_hf(folder)
    with torch.no_grad():
        other.model.transformer.wte.weight.add_(1.0)
    other.load_state_dict(state)
    assert torch.equal(other.model.lm_head.weight, model.model.transformer.wte.weight)
    assert other.model.lm_head.weight is other.model.transformer.wte.weight


def test_evolving_lowers_validation_loss(checkpoint, tmp_path):
    folder, text_file = checkpoint
    summary = api.evolve(f"hf:{folder}", data=text_file, out=tmp_path / "run", log=quiet, **SETTINGS)
    assert summary["model"] == f"hf:{folder}"
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.02, summary
    assert len(read_metrics(tmp_path / "run")) == SETTINGS["generations"]
    # Only the default subset evolved: the last block's attention and MLP.
    saved, _ = load_hf(folder)
    api.load_weights(saved, tmp_path / "run")
    original, _ = load_hf(folder)
    changed = {
        name
        for (name, a), (_, b) in zip(saved.model.named_parameters(), original.model.named_parameters())
        if not torch.equal(a, b)
    }
    assert changed and all(name.startswith(("transformer.h.1.attn.", "transformer.h.1.mlp.")) for name in changed), (
        changed
    )


def test_worker_uses_the_checkpoint_tokenizer(checkpoint):
    folder, text_file = checkpoint
    config = build_config(None, [("data.path", str(text_file)), ("model.context", "32"), ("threads", "1")])
    config.model.name = f"hf:{folder}"
    worker = hf_worker(config)
    assert worker.corpus.train.max() < VOCAB
    assert len(worker.corpus.train) + len(worker.corpus.val) < len(text_file.read_text().encode()) * 0.8
    assert worker.space.names == [
        name
        for name in worker.model.state_dict()
        if name.startswith(("model.transformer.h.1.attn.", "model.transformer.h.1.mlp."))
    ]


def test_params_regex_matches_checkpoint_names(checkpoint, tmp_path):
    folder, text_file = checkpoint
    config = build_config(
        None, [("data.path", str(text_file)), ("model.context", "32"), ("genome.params", r"^transformer\.ln_f\.")]
    )
    config.model.name = f"hf:{folder}"
    assert hf_worker(config).space.names == ["model.transformer.ln_f.weight", "model.transformer.ln_f.bias"]


def test_missing_folder_and_too_long_context_are_usage_errors(checkpoint, tmp_path):
    folder, text_file = checkpoint
    with pytest.raises(UsageError, match="does not exist"):
        api.evolve(f"hf:{tmp_path / 'nope'}", data=text_file, out=tmp_path / "a", log=quiet, generations=1)
    with pytest.raises(UsageError, match=r"model.context \(256\) exceeds the 128 positions"):
        api.evolve(f"hf:{folder}", data=text_file, out=tmp_path / "b", log=quiet, generations=1, context=256)


def test_resume_continues_an_interrupted_run_exactly(checkpoint, tmp_path, monkeypatch):
    folder, text_file = checkpoint
    settings = dict(SETTINGS, generations=4, checkpoint_every=1)
    api.evolve(f"hf:{folder}", data=text_file, out=tmp_path / "whole", log=quiet, **settings)
    with monkeypatch.context() as patch:
        interrupt_after_checkpoints(patch, 2)
        with pytest.raises(Interrupted):
            api.evolve(f"hf:{folder}", data=text_file, out=tmp_path / "cut", log=quiet, **settings)
    api.resume(tmp_path / "cut", log=quiet)  # a Hugging Face run needs no model argument: config.toml names it
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")


# --- the command line: evolm run --model hf:FOLDER ---------------------------------------------------


def test_cli_run_hf_folder_lowers_validation_loss_and_samples(checkpoint, tmp_path, cli):
    folder, text_file = checkpoint
    out = tmp_path / "run"
    result = cli(
        "run",
        "--model",
        f"hf:{folder}",
        "--data",
        str(text_file),
        "--out",
        str(out),
        "--quiet",
        "--population-size",
        "16",
        "--generations",
        "10",
        "--set",
        "model.context=32",
        "--set",
        "data.batch_size=8",
        "--set",
        "data.val_sequences=16",
        "--set",
        "threads=1",
        "--set",
        "strategy.learning_rate=0.02",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == f"hf:{folder}"
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.02, summary
    assert "evolm: sample (200 tokens" in result.stdout
    sample = cli("sample", str(out), "--prompt", "The ", "--tokens", "20", "--seed", "1")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("The ")
    assert cli("sample", str(out), "--prompt", "The ", "--tokens", "20", "--seed", "1").stdout == sample.stdout


def test_cli_hf_lowrank_genome(checkpoint, tmp_path, cli):
    folder, text_file = checkpoint
    result = cli(
        "run",
        "--model",
        f"hf:{folder}",
        "--data",
        str(text_file),
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--genome",
        "lowrank",
        "--population-size",
        "8",
        "--generations",
        "2",
        "--set",
        "model.context=32",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.val_sequences=8",
        "--set",
        "threads=1",
    )
    assert result.returncode == 0, result.stderr


def test_cli_hf_missing_folder_is_one_line(tmp_path, cli):
    result = cli("run", "--model", f"hf:{tmp_path / 'nope'}", "--out", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_hf_sigkill_then_resume_matches_an_uninterrupted_run(checkpoint, tmp_path, cli):
    folder, text_file = checkpoint
    args = [
        "run",
        "--model",
        f"hf:{folder}",
        "--data",
        str(text_file),
        "--quiet",
        "--population-size",
        "8",
        "--generations",
        "8",
        "--set",
        "model.context=32",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.val_sequences=8",
        "--set",
        "threads=1",
    ]
    whole = cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "evolm", *args, "--out", str(out)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "summary.json").exists()
    resumed = cli("resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert without_wall_clock(read_metrics(out)) == without_wall_clock(read_metrics(tmp_path / "whole"))


def test_api_resumes_a_killed_cli_run_of_an_hf_folder(checkpoint, tmp_path, cli):
    folder, text_file = checkpoint
    args = [
        "--model",
        f"hf:{folder}",
        "--data",
        str(text_file),
        "--quiet",
        "--population-size",
        "8",
        "--generations",
        "4",
        "--set",
        "model.context=32",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.val_sequences=8",
        "--set",
        "threads=1",
    ]
    whole = cli("run", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = cli_run_killed_after_checkpoints(2, *args, "--out", str(tmp_path / "cut"))
    assert killed.returncode == -9, killed.stderr
    resumed = api.resume(tmp_path / "cut", log=quiet)  # config.toml names the checkpoint folder: no model argument
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")
    assert resumed["model"] == f"hf:{folder}"
