"""The threads backend: in-process replicas on threads give exactly the in-process metrics."""

import pytest
import torch
from conftest import TINY, read_metrics, run_cli, without_wall_clock

from evolm.config import build_config
from evolm.engine import make_worker, run
from evolm.errors import UsageError
from evolm.evaluators import make_evaluator
from evolm.evaluators.threads import ThreadEvaluator

# TINY as config overrides, 5 generations.
OVERRIDES = [tuple(TINY[i + 1].split("=", 1)) for i, flag in enumerate(TINY) if flag == "--set"]
OVERRIDES += [("strategy.population_size", 16), ("generations", 5)]


def run_metrics(tmp_path, name, extra):
    config = build_config(overrides=[*OVERRIDES, *extra])
    run(config, tmp_path / name, progress=False, log=lambda *a: None)
    # Checkpoint cost figures are wall-clock too (the checkpoint holds the run's wall time).
    return [
        {k: v for k, v in row.items() if k not in ("checkpoint_seconds", "checkpoint_bytes")}
        for row in without_wall_clock(read_metrics(tmp_path / name))
    ]


CASES = {
    "es-seed": [],
    "ga-seed": [("strategy.name", "ga")],
    "ga-lowrank": [("strategy.name", "ga"), ("genome.name", "lowrank"), ("genome.batch_individuals", 4)],
    # The driver's weights change outside an update (a Lamarckian refinement): replicas must follow.
    "es-refine": [("refine.every", 2), ("refine.steps", 3), ("refine.batch_size", 8)],
    # Novelty is finished on the driver over both replicas' results.
    "es-novelty": [("fitness.terms", "likelihood=1,novelty=1"), ("fitness.prompts", 4), ("fitness.generate_tokens", 8)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_threads_backend_gives_the_in_process_metrics(tmp_path, case):
    threads = [("evaluator.workers", 2), ("evaluator.backend", "threads")]
    local = run_metrics(tmp_path, "local", CASES[case])
    threaded = run_metrics(tmp_path, "threads", [*CASES[case], *threads])
    assert threaded == local
    assert len(local) == 5 and local[-1]["val_loss"] < local[0]["val_loss"] + 0.5


def test_replicas_are_whole_workers_and_slices_cover_the_population():
    config = build_config(
        overrides=[
            *OVERRIDES,
            ("evaluator.workers", 3),
            ("evaluator.backend", "threads"),
            ("genome.name", "lowrank"),
            ("genome.batch_individuals", 4),
        ]
    )
    worker = make_worker(config)
    evaluator = make_evaluator(config, worker)
    try:
        assert isinstance(evaluator, ThreadEvaluator) and len(evaluator.replicas) == 3
        assert len({id(r.model) for r in evaluator.replicas}) == 3 and torch.get_num_threads() == 1
        # Slices start at multiples of the batched-pass size and cover everyone once, in order.
        for count in (1, 4, 10, 16, 17):
            slices = evaluator._slices(count)
            assert [i for a, b in slices for i in range(a, b)] == list(range(count))
            assert all(a % 4 == 0 for a, _ in slices)
    finally:
        evaluator.close()


def test_backend_errors_name_the_field():
    with pytest.raises(UsageError, match="evaluator.backend: unknown backend 'mpi'"):
        build_config(overrides=[("evaluator.backend", "mpi")])
    with pytest.raises(UsageError, match="evaluator.ray_address: the threads backend runs on this machine only"):
        build_config(overrides=[("evaluator.backend", "threads"), ("evaluator.ray_address", "auto")])


def test_cli_runs_on_threads(tmp_path):
    result = run_cli(
        "run",
        *TINY,
        "--generations",
        "3",
        "--workers",
        "2",
        "--backend",
        "threads",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert [row["generation"] for row in read_metrics(tmp_path / "run")] == [0, 1, 2]
    bad = run_cli("run", *TINY, "--backend", "mpi", "--out", str(tmp_path / "bad"), "--quiet")
    assert bad.returncode == 2 and "evaluator.backend" in bad.stderr and "Traceback" not in bad.stderr
