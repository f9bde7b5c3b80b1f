"""The Python API: a user's own module (a time-major LSTM) evolved through evolm.evolve with an adapter,
in-process and on Ray; a user fitness function; the clear error for a fitness Ray cannot ship."""

import json
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import evolm.api as api
from evolm.errors import UsageError

# Small and quick, yet the validation loss falls within a dozen generations.
TINY = dict(context=32, batch_size=8, val_sequences=16, population_size=16, generations=12, threads=1,
            checkpoint_every=0)
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
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == TINY["generations"]
    # The module passed in ends holding the evolved weights (those saved in model.safetensors).
    fresh = api.load_weights(TimeMajorLSTM(), tmp_path / "run")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


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
    summary = api.evolve(module, fitness=distance_fitness, out=tmp_path / "run", log=quiet, generations=30,
                         population_size=16, sigma=0.05, learning_rate=0.05, threads=1, checkpoint_every=0)
    after = distance_fitness(module)
    assert after > before / 4, (before, after)
    assert summary["best_fitness"] > before


def test_user_fitness_may_take_the_generation(tmp_path):
    seen = set()

    def fitness(module, generation):
        seen.add(generation)
        return distance_fitness(module)

    api.evolve(Weights(), fitness=fitness, out=tmp_path / "run", log=quiet, generations=3, population_size=4,
               threads=1, checkpoint_every=0)
    assert {0, 1, 2} <= seen


def test_unpicklable_fitness_is_refused_before_ray_starts(tmp_path, corpus):
    ray = pytest.importorskip("ray")
    lock = threading.Lock()
    was_running = ray.is_initialized()  # a session-wide runtime may exist already; evolm must not start one

    def fitness(module):  # closes over a lock: cloudpickle refuses it
        with lock:
            return distance_fitness(module)

    with pytest.raises(UsageError, match=r"fitness function .* cannot be sent to Ray actors \(evaluator.workers=2\).*"
                                         r"must be importable .* or picklable"):
        api.evolve(Weights, fitness=fitness, out=tmp_path / "run", log=quiet, workers=2, generations=2)
    assert ray.is_initialized() == was_running
    assert not (tmp_path / "run").exists()


def test_module_instance_on_ray_asks_for_a_factory(tmp_path):
    with pytest.raises(UsageError, match="zero-argument factory"):
        api.evolve(Weights(), fitness=distance_fitness, out=tmp_path / "run", log=quiet, workers=2)


def test_unknown_setting_is_named(tmp_path):
    with pytest.raises(UsageError, match="unknown setting 'generatoins'"):
        api.evolve(Weights, fitness=distance_fitness, out=tmp_path / "run", generatoins=3)


def config_accepts(name: str) -> bool:
    """Whether run configs (config.toml, hence resume) accept this model name yet."""
    from evolm.config import RunConfig, validate

    config = RunConfig()
    config.model.name = name
    try:
        validate(config)
    except UsageError:
        return False
    return True


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
    return [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
            for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not config_accepts("custom"), reason="evolm.config.validate does not accept model.name 'custom' yet")
def test_resume_continues_an_interrupted_run_exactly(tmp_path, corpus, monkeypatch):
    settings = dict(TINY, generations=5, checkpoint_every=1)
    whole = api.evolve(TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "whole", log=quiet, **settings)
    with monkeypatch.context() as patch:
        interrupt_after_checkpoints(patch, 2)
        with pytest.raises(Interrupted):
            api.evolve(TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "cut", log=quiet, **settings)
    assert len(rows(tmp_path / "cut")) == 2
    resumed = api.resume(tmp_path / "cut", TimeMajorLSTM, adapter=api.time_major, log=quiet)
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")
    assert resumed["val_loss_final"] == whole["val_loss_final"]


def ray_evaluator_builds_through_worker_factory() -> bool:
    path = Path(api.__file__).parent / "evaluators" / "ray.py"
    return path.is_file() and "factory" in path.read_text()


@pytest.mark.slow
@pytest.mark.skipif(not ray_evaluator_builds_through_worker_factory(),
                    reason="evolm/evaluators/ray.py is absent or its actors do not build workers through worker.factory")
def test_time_major_lstm_on_ray_matches_in_process(ray_runtime, tmp_path, corpus):
    pytest.importorskip("ray")
    from ray import cloudpickle

    settings = dict(TINY, generations=4)
    local = api.evolve(TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "local", log=quiet, **settings)
    # Actors import nothing from tests/: ship this module's classes by value, as for a notebook's (__main__).
    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        remote = api.evolve(TimeMajorLSTM, data=corpus, adapter=api.time_major, out=tmp_path / "ray", log=quiet,
                            workers=2, **settings)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    rows = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["evaluator_actors_alive"] == 2 and row["evaluator_resyncs"] == 0 for row in rows), rows[-1]
    assert remote["val_loss_final"] < remote["val_loss_initial"]
    assert remote["val_loss_final"] == pytest.approx(local["val_loss_final"], abs=1e-6)
    assert remote["best_fitness"] == pytest.approx(local["best_fitness"], abs=1e-6)


def ray_names_missing_modules() -> bool:
    path = Path(api.__file__).parent / "evaluators" / "ray.py"
    return path.is_file() and "No module named" in path.read_text()


@pytest.mark.slow
@pytest.mark.skipif(not ray_names_missing_modules(), reason="evolm/evaluators/ray.py does not yet name a module actors cannot import")
def test_fitness_from_a_module_actors_cannot_import_is_a_usage_error(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "private_fitness.py").write_text(
        "def fitness(module):\n    return -float(module.w.detach().pow(2).sum())\n")
    monkeypatch.syspath_prepend(str(folder))  # importable here, on the driver only
    import private_fitness

    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Weights travels; private_fitness is by reference
    try:
        with pytest.raises(UsageError, match="Ray actors cannot import module 'private_fitness'"):
            api.evolve(Weights, fitness=private_fitness.fitness, out=tmp_path / "run", log=quiet, workers=2,
                       generations=2, population_size=4, threads=1)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
