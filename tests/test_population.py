"""EGGROLL's batched low-rank population pass equals applying each genome and scoring it alone."""

import pytest
import torch

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.data import Corpus
from evolm.fitness import mean_log_likelihood
from evolm.genome import LowRankGenome, ParamSpace
from evolm.models import build_model
from evolm.population import population_log_likelihood


@pytest.mark.parametrize("model_name, params, rank", [("gpt", ".*", 1), ("gpt", "blocks.0|head", 3), ("lstm", ".*", 2)])
def test_batched_lowrank_fitness_matches_one_at_a_time(model_name, params, rank):
    config = build_config(
        overrides=[
            ("model.name", model_name),
            ("model.width", 32),
            ("model.layers", 2),
            ("model.heads", 2),
            ("model.ff", 64),
            ("model.context", 16),
        ]
    )
    model = build_model(config.model, 0).eval()
    space = ParamSpace(model, params)
    genome = LowRankGenome(space, rank=rank)
    corpus = Corpus.load(None, context=16)
    batch = corpus.sample_batch(4, torch.Generator().manual_seed(0))
    genes_list = [[(11, 0.05)], [(11, -0.05)], [], [(5, 0.1), (6, -0.02, 0b1011)]]
    batched = population_log_likelihood(model, batch, genome, genes_list)
    for genes, value in zip(genes_list, batched):
        genome.apply(model, genes)
        alone = mean_log_likelihood(model, batch)
        genome.undo(model, genes)
        assert value == pytest.approx(alone, abs=1e-4)
    assert batched[0] != pytest.approx(batched[1], abs=1e-6)  # the perturbations do something


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (factors drawn on the GPU)")
def test_batched_lowrank_pass_on_a_gpu_draws_factors_there_and_matches_one_at_a_time():
    config = build_config(
        overrides=[
            ("model.width", 32),
            ("model.layers", 1),
            ("model.heads", 2),
            ("model.ff", 64),
            ("model.context", 16),
        ]
    )
    model = build_model(config.model, 0).eval().cuda()
    genome = LowRankGenome(ParamSpace(model), rank=2)
    a, b = genome.factors(11, 0)
    assert a.device.type == b.device.type == "cuda"
    batch = Corpus.load(None, context=16).sample_batch(4, torch.Generator().manual_seed(0)).to("cuda")
    genes_list = [[(11, 0.05)], [(11, -0.05)]]
    for genes, value in zip(genes_list, population_log_likelihood(model, batch, genome, genes_list)):
        genome.apply(model, genes)
        assert value == pytest.approx(mean_log_likelihood(model, batch), abs=1e-4)
        genome.undo(model, genes)


def test_the_batched_pass_never_copies_the_weights():
    """EGGROLL's pass adds the low-rank term inside the forward: no in-place perturbation, so the
    worker never takes the undo snapshot (1x the weights) that in-place scoring needs."""
    from evolm.strategies.es import EsUpdate

    config = build_config(
        overrides=[
            ("genome.name", "lowrank"),
            ("genome.batch_individuals", 4),
            ("model.width", 32),
            ("model.layers", 1),
            ("model.heads", 2),
            ("model.ff", 64),
            ("model.context", 16),
            ("data.batch_size", 4),
            ("data.val_sequences", 4),
        ]
    )
    worker = worker_from_config(config)
    assert worker.population_chunk == 4
    worker.evaluate([[(1, 0.02)], [(1, -0.02)], [(2, 0.02)], [(2, -0.02)]], generation=0)
    worker.apply_update(EsUpdate([1, 2], [0.5, -0.5]))
    assert worker.space.snapshot_bytes() == 0
    with worker.applied([(3, 0.02)]):  # scoring one individual in place takes it, once
        pass
    weights = sum(t.numel() * t.element_size() for t in worker.space.tensors)
    assert worker.space.snapshot_bytes() == weights
