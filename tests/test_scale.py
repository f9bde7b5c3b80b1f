"""Simulated Ray actors (evolm.evaluators.simulated), the path benchmarks/scale.py measures the driver
on: a real host actor on the session's Ray runtime plays the logical actors, the driver's code runs
unchanged, every update's checksums agree, the simulated time and the bytes add up, and the bytes a
generation sends grow with the population but not with the model. Also the pieces of the driver's
dispatch that keep it cheap at many actors (evolm.evaluators.dispatch)."""

import gc
import math

import numpy as np
import pytest
import ray

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.engine import step_generation
from evolm.evaluators.dispatch import MAX_CHUNKS, chunk_count, values_of, wire_bytes
from evolm.evaluators.ray import RayEvaluator
from evolm.evaluators.ray_actor import pack, payload_bytes
from evolm.evaluators.simulated import ActorTiming, SimulatedActors, simulated_fitness
from evolm.strategies import make_strategy

ACTORS = 2  # the session runtime has 2 CPUs: the evaluator checks one per actor
GENERATIONS = 2
# A small model's times: the generation takes milliseconds, whatever the figures' source.
TIMING = ActorTiming(parameters=1_000_000, tokens_per_second=1e7, noise_values_per_second=1e10)


def config(width: int, population: int):
    return build_config(
        None,
        [
            ("threads", "1"),
            ("model.width", str(width)),
            ("model.ff", str(2 * width)),
            ("model.layers", "1"),
            ("model.heads", "2"),
            ("model.context", "32"),
            ("data.batch_size", "1"),
            ("data.val_sequences", "1"),
            ("strategy.name", "es"),
            ("genome.name", "seed"),
            ("strategy.population_size", str(population)),
            ("evaluator.workers", str(ACTORS)),
        ],
    )


def run_generations(width: int, population: int) -> list[dict]:
    """Generations on simulated actors (one host): per generation, the strategy's metrics, the evaluator's
    stats and what the host counted."""
    run_config = config(width, population)
    worker = worker_from_config(run_config)
    strategy = make_strategy(run_config, worker)
    actors = SimulatedActors(hosts=1, timing=TIMING)
    evaluator = RayEvaluator(run_config, worker, actor_class=actors)
    rows = []
    try:
        actors.take_traffic()  # the actors' start
        assert gc.get_freeze_count() > 0  # what the driver held at the start is skipped by the collector
        for generation in range(GENERATIONS):
            metrics, evaluated = step_generation(strategy, evaluator, generation)
            rows.append({"metrics": metrics, "evaluated": evaluated, **evaluator.stats(), **actors.take_traffic()})
    finally:
        evaluator.close()
        actors.close()
    assert len(actors.hosts) == 0 and actors.started == ACTORS
    assert gc.get_freeze_count() == 0  # and collected again once the evaluator is closed
    return rows


@pytest.fixture(scope="module")
def runs(ray_runtime):
    return {
        (width, population): run_generations(width, population) for width, population in ((16, 16), (32, 16), (16, 32))
    }


def test_simulated_actors_run_whole_generations_in_step_with_the_driver(runs):
    rows = runs[16, 16]
    for row in rows:
        assert row["evaluated"] == 16 and row["actors_alive"] == ACTORS
        assert row["resyncs"] == 0  # every logical actor's checksum after every update matched the driver's
        # The host counts what the evaluator counts: every argument and result, once.
        assert row["received"] + row["sent"] == row["bytes_sent"]
        # Simulated work: the whole population's evaluation and one update per logical actor (8 seeds).
        expected = TIMING.evaluate_seconds(16) + ACTORS * TIMING.update_seconds(8)
        assert math.isclose(row["busy_seconds"], expected, rel_tol=1e-9)
        assert row["busiest_actor_seconds"] <= row["busy_seconds"]
        assert row["genes_received"] > 0 and row["update_received"] > 0 and row["checksums_sent"] > 0
        # One remote call per chunk and one update per actor: 4 chunks per actor at 2 actors.
        assert row["calls"] == chunk_count(ACTORS) + ACTORS == 4 * ACTORS + ACTORS
        assert math.isfinite(row["metrics"]["best_fitness"])


def test_simulated_fitness_is_seeded_by_genes_and_generation():
    genes = [(12345, 0.01)]
    assert simulated_fitness(genes, 3, 2) == simulated_fitness(list(genes), 3, 2)
    assert len(simulated_fitness(genes, 3, 2)) == 2
    assert simulated_fitness(genes, 3, 1) != simulated_fitness(genes, 4, 1)
    assert simulated_fitness(genes, 3, 1) != simulated_fitness([(12345, -0.01)], 3, 1)


def test_bytes_grow_with_population_not_with_the_model(runs):
    small, large, doubled = runs[16, 16], runs[32, 16], runs[16, 32]
    # A model with 2.3x the evolved values (26,272 against 11,216): the same genes, fitness values, update and checksum lengths.
    assert [r["bytes_sent"] for r in small] == [r["bytes_sent"] for r in large]
    # The same genes score the same simulated fitness, whatever the model: the same run.
    assert [r["metrics"]["best_fitness"] for r in small] == [r["metrics"]["best_fitness"] for r in large]
    # Twice the population: more bytes (genes, fitness values, the update's seeds), but no more per
    # individual (the per-call framing is shared by more individuals): O(population).
    for one, two in zip(small, doubled):
        assert one["bytes_sent"] < two["bytes_sent"] <= 2 * one["bytes_sent"]
        for kind in ("genes_received", "fitness_sent", "update_received"):
            assert one[kind] < two[kind] <= 2 * one[kind]


def test_a_generation_has_one_chunk_per_actor_once_actors_are_many():
    # A chunk costs the driver a remote call and a result: few actors get 4 each to balance their
    # speeds, many get one each, and no actor is left without a chunk.
    assert [chunk_count(n) for n in (1, 2, 10, 100)] == [4, 8, 40, 400]
    assert chunk_count(MAX_CHUNKS // 2) == MAX_CHUNKS and chunk_count(1000) == 1000


def test_bytes_are_counted_as_cloudpickle_counts_them():
    """The driver counts with the standard pickler: the same bytes for what evolm sends and receives."""
    genes = [[(12345, 0.02)], [(12345, -0.02)]]
    values = [
        (pack(genes), 3),
        (pack([np.ones(5, np.float32), np.zeros(5, np.float32)]), 3),
        ([(0.5,), (-0.25,)], 2048),
        "0123456789abcdef",
        {"seeds": list(range(100)), "coefficients": [0.1] * 100},
    ]
    assert [wire_bytes(v) for v in values] == [payload_bytes(v) for v in values]
    assert wire_bytes(lambda x: x) == payload_bytes(lambda x: x)  # only cloudpickle pickles it


@ray.remote
def _answer(value):
    if value < 0:
        raise ValueError(f"negative: {value}")
    return value * 2


def test_values_of_gets_all_results_at_once_and_keeps_each_failure_in_place(ray_runtime):
    assert values_of([_answer.remote(v) for v in (1, 2, 3)]) == [2, 4, 6]
    values = values_of([_answer.remote(v) for v in (1, -2, 3)])
    assert values[0] == 2 and values[2] == 6
    assert isinstance(values[1], ray.exceptions.RayTaskError) and "negative: -2" in str(values[1])
