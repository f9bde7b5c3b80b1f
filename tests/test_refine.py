"""Gradient refinement: Lamarckian writes weights back, Baldwinian keeps only the fitness."""

import pytest
import torch
from conftest import TINY_SIZES

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.engine import step_generation
from evolm.evaluators import LocalEvaluator
from evolm.refine import maybe_refine
from evolm.strategies import make_strategy

TINY = [
    *TINY_SIZES,
    ("strategy.population_size", 8),
    ("refine.every", 1),
    ("refine.steps", 5),
    ("refine.batch_size", 8),
]


def setup(strategy, mode, loss="likelihood"):
    config = build_config(overrides=[*TINY, ("strategy.name", strategy), ("refine.mode", mode), ("refine.loss", loss)])
    worker = worker_from_config(config)
    evaluator = LocalEvaluator(worker)
    strategy = make_strategy(config, worker)
    step_generation(strategy, evaluator, 0)
    return config, worker, evaluator, strategy


@pytest.mark.parametrize("strategy_name", ["es", "ga"])
@pytest.mark.parametrize("loss", ["likelihood", "self"])
def test_lamarckian_refinement_changes_the_weights(strategy_name, loss):
    config, worker, evaluator, strategy = setup(strategy_name, "lamarckian", loss)
    with worker.applied(strategy.best_genes()):
        before_loss = worker.validation_loss()
    base_before = [t.clone() for t in worker.space.tensors]
    metrics = maybe_refine(config, strategy, worker, evaluator, 0)
    assert "refined_fitness" in metrics
    assert any(not torch.equal(a, b) for a, b in zip(worker.space.tensors, base_before))
    # The refined model is now what the strategy reports, and it is better on held-out text.
    assert worker.validation_loss(strategy.best_genes()) < before_loss
    if strategy_name == "ga":
        assert list(strategy.best) == []  # the best was folded into the refined base
        assert not any(ind.fitness.valid for ind in strategy.population)  # stale scores dropped


@pytest.mark.parametrize("strategy_name", ["es", "ga"])
def test_baldwinian_refinement_keeps_weights_and_changes_fitness(strategy_name):
    config, worker, evaluator, strategy = setup(strategy_name, "baldwinian")
    base_before = [t.clone() for t in worker.space.tensors]
    genes_before = [list(ind) for ind in getattr(strategy, "population", [])]
    best_before = strategy.best.fitness.values[0] if strategy_name == "ga" else None
    metrics = maybe_refine(config, strategy, worker, evaluator, 0)
    assert all(torch.equal(a, b) for a, b in zip(worker.space.tensors, base_before))
    assert [list(ind) for ind in getattr(strategy, "population", [])] == genes_before
    if strategy_name == "ga":
        assert strategy.best.fitness.values[0] == pytest.approx(metrics["refined_fitness"])
        assert metrics["refined_fitness"] > best_before  # five gradient steps fit the batch better


def test_bad_refine_settings_are_refused():
    from evolm.errors import UsageError

    with pytest.raises(UsageError, match="refine.mode"):
        build_config(overrides=[("refine.every", 2), ("refine.mode", "darwinian")])
    with pytest.raises(UsageError, match="refine.every"):
        build_config(overrides=[("refine.every", 2), ("strategy.name", "cmaes"), ("genome.name", "vector")])


def test_refinement_of_a_module_in_training_mode_is_seeded_and_leaves_the_callers_rng_alone():
    """Dropout in a module left in training mode draws from torch's global RNG: refinement scopes and seeds it."""
    from evolm.refine import refine_in_place

    config = build_config(overrides=[*TINY, ("model.dropout", 0.3)])
    worker = worker_from_config(config)
    worker.model.train()
    start = [t.clone() for t in worker.space.tensors]
    torch.manual_seed(42)
    caller = torch.get_rng_state()
    refined = []
    for _ in range(2):
        for tensor, value in zip(worker.space.tensors, start):
            tensor.copy_(value)
        refine_in_place(worker, generation=3, steps=3)
        assert torch.equal(torch.get_rng_state(), caller), "refinement drew from the caller's torch RNG"
        refined.append([t.clone() for t in worker.space.tensors])
    assert all(torch.equal(a, b) for a, b in zip(*refined))  # the same steps every time (and on every worker)
    worker.model.eval()
