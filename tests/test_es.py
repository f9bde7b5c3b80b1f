"""OpenAI-ES through the real worker/strategy path, on a quadratic with a known optimum."""

import torch
from functions import minimise, sphere
from torch import nn

from evolm.config import build_config
from evolm.genome import ParamSpace, SeedGenome
from evolm.strategies import centered_ranks


def test_centered_ranks():
    ranks = centered_ranks([3.0, -float("inf"), 10.0, 3.0])
    assert ranks.tolist() == [0.0, -0.5, 0.5, 0.0]  # the tied 3.0s share rank 1.5 of 0..3


def test_openai_es_reaches_the_optimum_of_a_50d_quadratic():
    target = torch.linspace(-1.0, 1.0, 50)
    config = build_config(
        overrides=[
            ("strategy.population_size", 40),
            ("strategy.sigma", 0.05),
            ("strategy.learning_rate", 0.05),
            ("generations", 300),
        ]
    )
    initial_error = float(sphere(target))
    final_error = minimise(config, sphere, target)
    # Within 1% of the optimum: the squared distance falls below 1% of where it started.
    assert final_error < 0.01 * initial_error, (initial_error, final_error)


def test_seed_genome_undo_is_exact_and_noise_differs_per_tensor():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    space = ParamSpace(model)
    genome = SeedGenome(space)
    before = [t.clone() for t in space.tensors]
    genome.apply(model, [(123, 0.1), (7, -0.05)])
    assert not torch.equal(space.tensors[0], before[0])
    genome.undo(model, [(123, 0.1), (7, -0.05)])
    assert all(torch.equal(a, b) for a, b in zip(space.tensors, before))
    # Two same-shaped tensors (the two weight matrices) must not receive the same noise.
    assert not torch.equal(genome.noise(123, 0).clone(), genome.noise(123, 2).clone())


class _Holder:
    """What EsUpdate.apply reads from a worker."""

    def __init__(self, space, genome, optimizer):
        self.space, self.genome, self._optimizer = space, genome, optimizer

    def center_optimizer(self):
        return self._optimizer


def _multi_chunk_space():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(600, 600), nn.Linear(600, 4))  # 360,000 weights: two noise chunks
    return ParamSpace(model)


def test_chunked_adam_step_equals_torch_adam_and_shares_its_state_format():
    from evolm.strategies.es import EsUpdate
    from evolm.strategies.optimizers import make_center_optimizer

    config = build_config(overrides=[("strategy.weight_decay", 0.01)])
    ours, theirs = _multi_chunk_space(), _multi_chunk_space()
    ours.snapshot()  # as the first in-place perturbation would: the update must move the snapshot too
    genome = SeedGenome(ours, cache_bytes=0)  # chunk by chunk, as for a large model
    optimizer = make_center_optimizer(ours.parameters, config)
    reference = torch.optim.Adam(theirs.parameters, lr=config.strategy.learning_rate, weight_decay=0.01)
    for step in range(3):
        seeds, coefficients = [11 + step, 40], [0.7, -0.3 * step]
        EsUpdate(seeds, coefficients).apply(_Holder(ours, genome, optimizer))
        for index, parameter in enumerate(theirs.parameters):
            parameter.grad = genome.combined_noise(seeds, coefficients, index).neg_()
        reference.step()
        assert all(torch.equal(a, b) for a, b in zip(ours.tensors, theirs.tensors)), step
    assert all(torch.equal(a, b) for a, b in zip(ours._base, ours.tensors))  # the update is the new base
    # A checkpoint of either loads into the other and continues identically.
    mine, torch_state = optimizer.state_dict(), reference.state_dict()
    assert mine["param_groups"] == torch_state["param_groups"]
    resumed = make_center_optimizer(ours.parameters, config)
    resumed.load_state_dict(torch_state)
    for index, state in torch_state["state"].items():
        assert all(torch.equal(state[key], resumed.state_dict()["state"][index][key]) for key in state)


def test_sgd_center_step_is_plain_and_keeps_no_state():
    from evolm.strategies.es import EsUpdate
    from evolm.strategies.optimizers import make_center_optimizer

    config = build_config(overrides=[("strategy.optimizer", "sgd"), ("strategy.learning_rate", 0.1)])
    space = _multi_chunk_space()
    genome = SeedGenome(space, cache_bytes=0)
    before = [t.clone() for t in space.tensors]
    optimizer = make_center_optimizer(space.parameters, config)
    EsUpdate([3, 4], [0.5, -1.0]).apply(_Holder(space, genome, optimizer))
    for index, (tensor, old) in enumerate(zip(space.tensors, before)):
        expected = old.add(genome.combined_noise([3, 4], [0.5, -1.0], index), alpha=0.1)  # theta + lr * g
        assert torch.equal(tensor, expected)
    assert optimizer.state_dict() is None


def test_openai_es_with_sgd_reaches_the_optimum_of_a_50d_quadratic():
    target = torch.linspace(-1.0, 1.0, 50)
    config = build_config(
        overrides=[
            ("strategy.population_size", 40),
            ("strategy.sigma", 0.05),
            ("strategy.optimizer", "sgd"),
            ("strategy.learning_rate", 0.02),
            ("generations", 300),
        ]
    )
    initial_error = float(sphere(target))
    assert minimise(config, sphere, target) < 0.01 * initial_error
