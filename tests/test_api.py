"""The Python API: a user's own module (a time-major LSTM) evolved through evolm.evolve with an adapter,
in-process and on Ray; a user fitness function; the clear error for a fitness Ray cannot ship; resuming,
from Python, runs that evolve() or the ``evolm`` command started and that were killed mid-run."""

import json
import os
import subprocess
import sys
import threading

import pytest
import ray
import torch
from conftest import REPO, read_metrics, without_wall_clock
from conftest import TINY as CLI_TINY
from ray import cloudpickle
from torch import nn

import evolm.api as api
from evolm.errors import UsageError

# Small and quick, yet the validation loss falls within a dozen generations.
TINY = dict(
    context=32, batch_size=8, val_sequences=16, population_size=16, generations=12, threads=1, checkpoint_every=0
)
TEXT = "the quick brown fox jumps over the lazy dog. " * 400


class TimeMajorLSTM(nn.Module):
    """A researcher's LSTM as written: token ids (batch, time) in, logits (time, batch, vocab) out."""

    def __init__(self, vocab=256, width=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width)  # no batch_first: time-major
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens.t()))
        return self.head(output)


class Weights(nn.Module):
    def __init__(self, size=8):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size))


TARGET = torch.linspace(-0.5, 0.5, 8)


def distance_fitness(module):
    """Maximise -||w - target||^2: an importable (module-level) user fitness."""
    return -float(((module.w.detach() - TARGET) ** 2).sum())


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def quiet(*args):
    pass


def test_time_major_lstm_with_adapter_lowers_validation_loss(tmp_path, corpus):
    torch.manual_seed(0)
    model = TimeMajorLSTM()
    summary = api.evolve(model, data=corpus, adapter=api.time_major, out=tmp_path / "run", log=quiet, **TINY)
    assert summary["model"] == "custom"
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.05, summary
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == TINY["generations"]
    # The module passed in ends holding the evolved weights (those saved in model.safetensors).
    fresh = api.load_weights(TimeMajorLSTM(), tmp_path / "run")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_custom_module_run_samples_its_final_model_once_through_the_worker(tmp_path, corpus):
    from evolm.textstats import printable

    settings = dict(TINY, generations=2)
    messages = []
    api.evolve(
        TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "run", log=messages.append, **settings
    )
    samples = [message for message in messages if message.startswith("evolm: sample")]
    assert len(samples) == 1, messages
    # The same text from a fresh worker around the saved weights: the engine sampled the final model.
    config = api.make_config(data=corpus, settings=settings)
    worker = api.build_worker(config, api.load_weights(TimeMajorLSTM(), tmp_path / "run"), adapter=api.time_major)
    expected = api.sample_from_worker(worker, seed=config.seed)
    assert samples[0] == "evolm: sample (200 tokens, temperature 0.8):\n" + printable(expected)


def test_wrong_layout_without_adapter_says_time_major(tmp_path, corpus):
    with pytest.raises(UsageError, match="time-major: pass adapter=evolm.api.time_major"):
        api.evolve(TimeMajorLSTM, data=corpus, out=tmp_path / "run", log=quiet, **TINY)
    assert not (tmp_path / "run").exists()


def test_builtin_adapters():
    logits = torch.randn(5, 2, 7)
    assert api.time_major((logits, None)).shape == (2, 5, 7)
    assert torch.equal(api.logits_from("logits")({"logits": logits}), logits)
    assert api.logits_from(0, time_major=True)((logits, 1)).shape == (2, 5, 7)


def test_user_fitness_function_in_process(tmp_path):
    module = Weights()
    before = distance_fitness(module)
    summary = api.evolve(
        module,
        fitness=distance_fitness,
        out=tmp_path / "run",
        log=quiet,
        generations=30,
        population_size=16,
        sigma=0.05,
        learning_rate=0.05,
        threads=1,
        checkpoint_every=0,
    )
    after = distance_fitness(module)
    assert after > before / 4, (before, after)
    assert summary["best_fitness"] > before


def test_user_fitness_may_take_the_generation(tmp_path):
    seen = set()

    def fitness(module, generation):
        seen.add(generation)
        return distance_fitness(module)

    api.evolve(
        Weights(),
        fitness=fitness,
        out=tmp_path / "run",
        log=quiet,
        generations=3,
        population_size=4,
        threads=1,
        checkpoint_every=0,
    )
    assert {0, 1, 2} <= seen


def test_unpicklable_fitness_is_refused_before_ray_starts(tmp_path, corpus):
    lock = threading.Lock()
    was_running = ray.is_initialized()  # a session-wide runtime may exist already; evolm must not start one

    def fitness(module):  # closes over a lock: cloudpickle refuses it
        with lock:
            return distance_fitness(module)

    with pytest.raises(
        UsageError,
        match=r"fitness function .* cannot be sent to Ray actors \(evaluator.workers=2\).*"
        r"must be importable .* or picklable",
    ):
        api.evolve(Weights, fitness=fitness, out=tmp_path / "run", log=quiet, workers=2, generations=2)
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "run").exists()


def test_module_instance_on_ray_asks_for_a_factory(tmp_path):
    with pytest.raises(UsageError, match="zero-argument factory"):
        api.evolve(Weights(), fitness=distance_fitness, out=tmp_path / "run", log=quiet, workers=2)


def test_unknown_setting_is_named(tmp_path):
    with pytest.raises(UsageError, match="unknown setting 'generatoins'"):
        api.evolve(Weights, fitness=distance_fitness, out=tmp_path / "run", generatoins=3)


class Interrupted(Exception):
    pass


def interrupt_after_checkpoints(monkeypatch, count: int):
    """Make the engine stop (as a kill would) right after its ``count``-th checkpoint."""
    import evolm.engine as engine

    real, saved = engine.save_checkpoint, []

    def save_then_stop(*args, **kwargs):
        result = real(*args, **kwargs)
        saved.append(1)
        if len(saved) == count:
            raise Interrupted
        return result

    monkeypatch.setattr(engine, "save_checkpoint", save_then_stop)


def rows(run_dir):
    """A run's metrics rows without the wall-clock fields."""
    return without_wall_clock(read_metrics(run_dir))


def test_resume_continues_an_interrupted_run_exactly(tmp_path, corpus, monkeypatch):
    settings = dict(TINY, generations=5, checkpoint_every=1)
    whole = api.evolve(
        TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "whole", log=quiet, **settings
    )
    with monkeypatch.context() as patch:
        interrupt_after_checkpoints(patch, 2)
        with pytest.raises(Interrupted):
            api.evolve(TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "cut", log=quiet, **settings)
    assert len(rows(tmp_path / "cut")) == 2
    resumed = api.resume(tmp_path / "cut", TimeMajorLSTM, adapter=api.time_major, log=quiet)
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")
    assert resumed["val_loss_final"] == whole["val_loss_final"]


@pytest.mark.slow
def test_time_major_lstm_on_ray_matches_in_process(ray_runtime, tmp_path, corpus):
    settings = dict(TINY, generations=4)
    local = api.evolve(
        TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "local", log=quiet, **settings
    )
    # Actors import nothing from tests/: ship this module's classes by value, as for a notebook's (__main__).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        remote = api.evolve(
            TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "ray", log=quiet, workers=2, **settings
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    lines = read_metrics(tmp_path / "ray")
    assert all(row["evaluator_actors_alive"] == 2 and row["evaluator_resyncs"] == 0 for row in lines), lines[-1]
    assert remote["val_loss_final"] < remote["val_loss_initial"]
    assert remote["val_loss_final"] == pytest.approx(local["val_loss_final"], abs=1e-6)
    assert remote["best_fitness"] == pytest.approx(local["best_fitness"], abs=1e-6)


@pytest.mark.slow
def test_fitness_from_a_module_actors_cannot_import_is_a_usage_error(tmp_path, monkeypatch):
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "private_fitness.py").write_text(
        "def fitness(module):\n    return -float(module.w.detach().pow(2).sum())\n"
    )
    monkeypatch.syspath_prepend(str(folder))  # importable here, on the driver only
    import private_fitness

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Weights travels; private_fitness is by reference
    try:
        with pytest.raises(UsageError, match="Ray actors cannot import module 'private_fitness'"):
            api.evolve(
                Weights,
                fitness=private_fitness.fitness,
                out=tmp_path / "run",
                log=quiet,
                workers=2,
                generations=2,
                population_size=4,
                threads=1,
            )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


# --- resuming, from Python, a run the evolm command started ------------------------------------------

# `evolm run` in a subprocess that SIGKILLs itself right after its N-th checkpoint: a kill at a known point.
KILLED_AFTER_CHECKPOINTS = """
import os, signal, sys
import evolm.engine as engine
real, saved = engine.save_checkpoint, []
def save_then_die(*args, **kwargs):
    real(*args, **kwargs)
    saved.append(1)
    if len(saved) == int(os.environ["EVOLM_TEST_KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
engine.save_checkpoint = save_then_die
from evolm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cli_run_killed_after_checkpoints(count: int, *args):
    """Run ``evolm run ARGS`` as a subprocess killed by SIGKILL right after its ``count``-th checkpoint."""
    env = dict(os.environ, PYTHONPATH=str(REPO), EVOLM_TEST_KILL_AFTER=str(count))
    return subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CHECKPOINTS, "run", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def without_wall_clock_fields(summary: dict) -> dict:
    # The checkpoint's cost (seconds, and bytes holding the wall time) varies with the clock too, and peak memory
    # with the machine.
    return {
        k: v
        for k, v in summary.items()
        if k not in ("wall_seconds", "compute_seconds", "peak_rss_mb", "run_dir")
        and not k.startswith("last_checkpoint_")
    }


@pytest.mark.parametrize("model", ["gpt", "lstm"])
def test_api_resumes_a_killed_cli_run_of_a_builtin_model(tmp_path, cli, model):
    args = [*CLI_TINY, "--model", model, "--generations", "4", "--checkpoint-every", "1", "--quiet"]
    whole = cli("run", *args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = cli_run_killed_after_checkpoints(2, *args, "--out", str(tmp_path / "cut"))
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "cut" / "summary.json").exists() and len(read_metrics(tmp_path / "cut")) == 2
    messages = []
    resumed = api.resume(tmp_path / "cut", log=messages.append)  # in-process; config.toml names the built-in model
    assert any("resuming" in message and "at generation 2 of 4" in message for message in messages), messages
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")
    assert resumed["model"] == model
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert without_wall_clock_fields(resumed) == without_wall_clock_fields(expected)


def test_builtin_model_by_name_and_resume_mismatches(tmp_path, cli):
    summary = api.evolve(
        "lstm",
        out=tmp_path / "run",
        log=quiet,
        generations=2,
        population_size=4,
        context=16,
        batch_size=4,
        val_sequences=4,
        threads=1,
        model__width=16,
    )
    assert summary["model"] == "lstm" and summary["generations"] == 2
    assert (tmp_path / "run" / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="built-in model 'gpt' is set up by config fields .* drop adapter="):
        api.evolve("gpt", adapter=api.time_major, out=tmp_path / "other", log=quiet)
    with pytest.raises(UsageError, match="must be one of the built-in models \\(gpt, lstm\\) or hf:PATH"):
        api.evolve("transformer", out=tmp_path / "other", log=quiet)
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(UsageError, match="evolved 'lstm' \\(its config.toml\\), not .*leave model= out"):
        api.resume(tmp_path / "run", TimeMajorLSTM, log=quiet)
    with pytest.raises(UsageError, match="evolved 'lstm' \\(its config.toml\\), not 'gpt'"):
        api.resume(tmp_path / "run", "gpt", log=quiet)
