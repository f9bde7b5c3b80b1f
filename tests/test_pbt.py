"""Population-based training: exploit copies weights and hyperparameters from a better member."""

import torch
from conftest import TINY_SIZES

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.engine import step_generation
from evolm.evaluators import LocalEvaluator
from evolm.strategies import make_strategy

TINY = [
    *TINY_SIZES,
    ("strategy.name", "pbt"),
    ("strategy.population_size", 4),
    ("strategy.pbt_steps", 10),
]


def test_exploit_copies_weights_and_hyperparameters_from_a_better_member():
    config = build_config(overrides=TINY)
    worker = worker_from_config(config)
    strategy = make_strategy(config, worker)
    evaluator = LocalEvaluator(worker)
    initial = worker.validation_loss()
    population = strategy.ask(0)
    fitness = [ind.fitness.values[0] for ind in population]
    trained = [[t.clone() for t in m["tensors"]] for m in strategy.members]
    genes_before = [list(m["genes"]) for m in strategy.members]
    metrics, update = strategy.tell(population, 0)
    assert update is None and metrics["exploited"]
    for loser, winner in metrics["exploited"]:
        assert fitness[winner] > fitness[loser]
        # Weights: an exact copy of the winner's trained weights.
        assert all(torch.equal(a, b) for a, b in zip(strategy.members[loser]["tensors"], trained[winner]))
        # Hyperparameters: the winner's, explored (perturbed or redrawn), no longer the loser's own.
        assert strategy.members[loser]["genes"] != genes_before[loser]
    assert worker.validation_loss() < initial  # the worker now holds the best member
    # Members keep training across generations under the engine's loop.
    step_metrics, evaluated = step_generation(strategy, evaluator, 1)
    assert evaluated == 4 and step_metrics["extra_forward_tokens"] > 0


def test_pbt_refuses_thread_workers():
    """Members train in-process or on Ray actors (tests/test_pbt_ray.py), not on threads."""
    import pytest

    from evolm.errors import UsageError

    with pytest.raises(UsageError, match="evaluator.backend"):
        build_config(overrides=[*TINY, ("evaluator.workers", 2), ("evaluator.backend", "threads")])


def test_pbt_dropout_is_seeded_and_leaves_the_callers_rng_states_alone():
    """Members train with dropout (a hyperparameter) under scoped seeds: two runs agree, the caller's states survive."""
    import random

    import numpy as np

    config = build_config(overrides=[*TINY, ("strategy.pbt_steps", 3)])
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    runs = []
    for _ in range(2):
        worker = worker_from_config(config)
        strategy = make_strategy(config, worker)
        evaluator = LocalEvaluator(worker)
        assert any(strategy.genome.decode(m["genes"])["dropout"] > 0.01 for m in strategy.members)
        metrics = [step_generation(strategy, evaluator, generation)[0] for generation in range(2)]
        runs.append((metrics, [t.clone() for t in worker.space.tensors]))
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
