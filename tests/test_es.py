"""OpenAI-ES through the real worker/strategy path, on a quadratic with a known optimum."""

import torch
from torch import nn

from evolm.config import build_config
from evolm.genome import ParamSpace, SeedGenome
from evolm.strategies import centered_ranks
from functions import minimise, sphere


def test_centered_ranks():
    ranks = centered_ranks([3.0, -float("inf"), 10.0, 3.0])
    assert ranks.tolist() == [0.0, -0.5, 0.5, 0.0]  # the tied 3.0s share rank 1.5 of 0..3


def test_openai_es_reaches_the_optimum_of_a_50d_quadratic():
    target = torch.linspace(-1.0, 1.0, 50)
    config = build_config(overrides=[("strategy.population_size", 40), ("strategy.sigma", 0.05),
                                     ("strategy.learning_rate", 0.05), ("generations", 300)])
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
