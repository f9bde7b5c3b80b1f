"""Population-based training on Ray actors, on a real Ray runtime (conftest's ``ray_runtime``: loopback,
token authentication on): the same metrics as in-process, exploit that moves member states between
actors through the object store (not through the driver), an interrupted run resumed exactly, and
killed actors replaced with nothing lost. Bad combinations are one-line errors naming the field."""

import pytest
import ray
from conftest import TINY_SIZES, read_metrics

import evolm.engine
from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.errors import UsageError
from evolm.evaluators import make_evaluator

GENERATIONS = 4
MEMBERS = 4  # pbt_quantile 0.25: one loser copies one winner every generation
OVERRIDES = [
    *TINY_SIZES,
    ("strategy.name", "pbt"),
    ("strategy.population_size", MEMBERS),
    ("strategy.pbt_steps", 3),
    ("generations", GENERATIONS),
    ("report_every", 1),
    ("checkpoint_every", 0),
]


def config_for(workers=0, extra=()):
    return build_config(overrides=[*OVERRIDES, ("evaluator.workers", workers), *extra])


def comparable(rows):
    """What must repeat exactly: every field but the clock's and the transport's (``evaluator_*``)."""
    clock = ("wall_seconds", "compute_seconds", "checkpoint_seconds", "checkpoint_bytes")
    return [{k: v for k, v in row.items() if k not in clock and not k.startswith("evaluator_")} for row in rows]


def run_engine(config, out_dir):
    evolm.engine.run(config, out_dir=out_dir, progress=False, log=lambda *args: None)
    return read_metrics(out_dir)


def hooked(monkeypatch, hook, made=None):
    """The engine's evaluators get ``on_member_done = hook`` (and are collected in ``made``)."""
    real = evolm.engine.make_evaluator

    def make(config, worker):
        evaluator = real(config, worker)
        evaluator.on_member_done = hook
        if made is not None:
            made.append(evaluator)
        return evaluator

    monkeypatch.setattr(evolm.engine, "make_evaluator", make)
    return real


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory):
    return run_engine(config_for(), tmp_path_factory.mktemp("pbt-local"))


@pytest.fixture(scope="module")
def ray_rows(ray_runtime, tmp_path_factory):
    return run_engine(config_for(workers=2), tmp_path_factory.mktemp("pbt-ray"))


def test_pbt_on_ray_gives_the_same_metrics_as_in_process(local_rows, ray_rows):
    assert comparable(ray_rows) == comparable(local_rows)
    assert [row["generation"] for row in ray_rows] == list(range(GENERATIONS))
    assert all(row["exploited"] for row in ray_rows)
    assert all(row["evaluator_actors_alive"] == 2 and row["evaluator_actors_replaced"] == 0 for row in ray_rows)


def test_exploit_moves_states_between_actors_not_through_the_driver(ray_rows):
    """Each generation after the first, the loser's actor loads the winner's state (weights and Adam's
    two moments: 3x the weights) from the object store; the driver receives only fitness values and
    the best member's weights (its base, for validation), never a loser's or a winner's whole state."""
    worker = worker_from_config(config_for())
    weight_bytes = sum(t.numel() * t.element_size() for t in worker.space.tensors)
    first = ray_rows[0]
    # Generation 0: every member starts from the driver's weights, put in the object store once.
    assert first["evaluator_states_loaded"] == MEMBERS
    assert weight_bytes <= first["evaluator_bytes_sent"] < 1.1 * weight_bytes
    for previous, row in zip(ray_rows, ray_rows[1:]):
        losers = {loser for loser, _ in previous["exploited"]}
        # Only the exploited members were shipped; the others trained on where they were.
        assert row["evaluator_states_loaded"] == len(losers) >= 1
        assert row["evaluator_bytes_sent"] < 2000  # genes and generation numbers: no weights
        assert weight_bytes <= row["evaluator_bytes_received"] < 1.1 * weight_bytes


@pytest.mark.slow  # two actor starts: about 15-25 s here
def test_killed_actors_are_replaced_and_the_run_ends_the_same(local_rows, tmp_path, monkeypatch):
    """An actor killed in the middle of generation 1, then the last serving one after the last member of
    generation 2: each member it held trains again, or on, elsewhere from the state the driver's
    handle keeps in the object store (the object outlives the actor that made it)."""
    kills, done = [], {}

    def kill(evaluator, generation, member):
        done[generation] = done.get(generation, 0) + 1
        if (generation, done[generation]) in ((1, 1), (2, MEMBERS)):
            kills.append(generation)
            ray.kill(evaluator.actors[-1])

    made: list = []
    hooked(monkeypatch, kill, made)
    rows = run_engine(config_for(workers=2), tmp_path / "killed")
    assert kills == [1, 2]
    stats = made[0].stats()
    assert stats["actors_replaced"] == 2 and stats["members_rerun"] >= 1, stats
    assert comparable(rows) == comparable(local_rows)


def test_interrupted_pbt_on_ray_resumes_to_the_same_metrics(local_rows, tmp_path, monkeypatch):
    """Interrupted in generation 2 (as by Ctrl-C) after a checkpoint every generation, resumed on fresh
    actors: the members come back from the checkpoint, shipped once each, and train on exactly."""

    def interrupt(evaluator, generation, member):
        if generation == 2:
            raise KeyboardInterrupt

    real = hooked(monkeypatch, interrupt)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_engine(config_for(workers=2, extra=[("checkpoint_every", 1)]), out)
    assert len(read_metrics(out)) == 2
    monkeypatch.setattr(evolm.engine, "make_evaluator", real)
    evolm.engine.resume(out, progress=False, log=lambda *args: None)
    rows = read_metrics(out)
    assert comparable(rows) == comparable(local_rows)
    assert rows[2]["evaluator_states_loaded"] == MEMBERS  # every member restored from the checkpoint


@pytest.mark.parametrize(
    "extra, field",
    [
        ([("evaluator.workers", 2), ("evaluator.backend", "threads")], "evaluator.backend"),
        ([("evaluator.workers", MEMBERS + 1)], "evaluator.workers"),
    ],
)
def test_bad_combinations_are_one_line_naming_the_field(extra, field):
    with pytest.raises(UsageError, match=f"config field {field}") as error:
        build_config(overrides=[*OVERRIDES, *extra])
    assert "\n" not in str(error.value)


def test_actors_on_another_device_type_than_the_driver_are_refused():
    config = config_for(workers=2, extra=[("evaluator.gpus_per_worker", 0.5)])
    with pytest.raises(UsageError, match="config field evaluator.gpus_per_worker") as error:
        make_evaluator(config, worker_from_config(config))
    assert "\n" not in str(error.value)
