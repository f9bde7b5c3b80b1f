"""A low-rank population writes in one batched pass exactly what each individual writes alone."""

import math

import pytest
import torch

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.data import Corpus
from evolm.fitness import Writing
from evolm.genome import LowRankGenome, ParamSpace
from evolm.models import build_model
from evolm.population_writing import population_write

GENES = [[(11, 0.05)], [(11, -0.05)], [], [(5, 0.1), (6, -0.02, 0b1011)]]
SMALL = [("model.width", 32), ("model.layers", 2), ("model.heads", 2), ("model.ff", 64), ("model.context", 16)]


def prompts(rows=3, length=8):
    corpus = Corpus.load(None, context=16)
    return corpus.sample_batch(rows, torch.Generator().manual_seed(1)).inputs[:, :length]


def written_alone(model, genome, genes_list, writing):
    out = []
    for genes in genes_list:
        genome.apply(model, genes)
        try:
            generator = torch.Generator().manual_seed(writing.seed)
            out.append(model.generate(writing.prompts, writing.new_tokens, writing.temperature, generator))
        finally:
            genome.undo(model, genes)
    return out


def assert_written_as_alone(model, params=".*", rank=2, temperature=1.0, new_tokens=20):
    genome = LowRankGenome(ParamSpace(model, params), rank=rank)
    writing = Writing(prompts(), new_tokens, temperature, seed=7)
    batched = population_write(model, genome, GENES, writing)
    alone = written_alone(model, genome, GENES, writing)
    for one, other in zip(batched, alone):
        assert one is not None and torch.equal(one, other)
    assert not torch.equal(batched[0], batched[3])  # the perturbations change what is written
    assert all("forward" not in vars(module) for module in model.modules())  # the model is left as it was


# 8-token prompts + 20 new tokens pass the GPT's 16 positions: its cache rebuild runs inside the pass.
@pytest.mark.parametrize("model_name, params", [("gpt", ".*"), ("gpt", "blocks.1|head"), ("lstm", ".*")])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_population_writes_what_each_individual_writes_alone(model_name, params, temperature):
    model = build_model(build_config(overrides=[("model.name", model_name), *SMALL]).model, 0).eval()
    assert_written_as_alone(model, params, temperature=temperature)


def test_a_hugging_face_gpt2_population_writes_as_each_alone():
    transformers = pytest.importorskip("transformers")
    from evolm.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    assert_written_as_alone(HFCausalLM(transformers.GPT2LMHeadModel(config)).eval(), rank=1, new_tokens=12)


def test_a_diverged_individual_writes_nothing_and_the_others_are_unaffected():
    model = build_model(build_config(overrides=SMALL).model, 0).eval()
    genome = LowRankGenome(ParamSpace(model, ".*"), rank=1)
    genes_list = [[(3, 0.05)], [(3, math.nan)], [(4, 0.05)]]
    for temperature in (1.0, 0.0):
        writing = Writing(prompts(), 10, temperature, seed=2)
        batched = population_write(model, genome, genes_list, writing)
        assert batched[1] is None
        healthy = [genes_list[0], genes_list[2]]
        for one, other in zip([batched[0], batched[2]], written_alone(model, genome, healthy, writing)):
            assert torch.equal(one, other)


def worker_fitnesses(overrides, chunk):
    config = build_config(overrides=[*overrides, ("genome.name", "lowrank"), ("genome.batch_individuals", chunk)])
    worker = worker_from_config(config)
    assert worker.population_chunk == (chunk if chunk > 1 else 0)
    return worker.evaluate(GENES * 2, 0), worker.forward_tokens


@pytest.mark.parametrize(
    "terms, scorer",
    [("self=1,diversity=0.3", "reference"), ("likelihood=1,self=0.5", "self"), ("diversity=1,novelty=0.5", "self")],
)
def test_a_worker_scores_a_writing_population_in_batches_as_one_at_a_time(terms, scorer):
    overrides = [*SMALL, ("fitness.terms", terms), ("fitness.scorer", scorer), ("fitness.prompts", 3)]
    overrides += [("fitness.generate_tokens", 12), ("data.batch_size", 2)]
    one_at_a_time, tokens_alone = worker_fitnesses(overrides, 1)
    batched, tokens_batched = worker_fitnesses(overrides, 4)
    assert tokens_batched == tokens_alone
    for one, other in zip(batched, one_at_a_time):
        values = getattr(one, "values", one)
        assert values == pytest.approx(getattr(other, "values", other), abs=1e-4)
        if hasattr(one, "profile"):
            assert one.profile == pytest.approx(other.profile)


@pytest.mark.parametrize("kind", ["reward", "logprob"])
def test_a_task_population_writes_in_batches_as_one_at_a_time(kind):
    overrides = [*SMALL, ("model.context", 32), ("task.name", "arithmetic"), ("task.fitness", kind)]
    overrides += [("task.batch", 4), ("task.decoding", "sample")]
    one_at_a_time, _ = worker_fitnesses(overrides, 1)
    batched, _ = worker_fitnesses(overrides, 8)
    for one, other in zip(batched, one_at_a_time):
        assert one.values == pytest.approx(other.values, abs=1e-4)
        assert one.rewards == other.rewards
