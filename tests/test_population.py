"""EGGROLL's batched low-rank population pass equals applying each genome and scoring it alone."""

import pytest
import torch
from torch import nn

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.data import Corpus
from evolm.fitness import mean_log_likelihood
from evolm.genome import LowRankGenome, ParamSpace
from evolm.models import build_model
from evolm.population import (
    PopulationDelta,
    general_population_logits,
    gpt_population_logits,
    population_log_likelihood,
    supports_population,
)


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


GENES = [[(11, 0.05)], [(11, -0.05)], [], [(5, 0.1), (6, -0.02, 0b1011)]]


def assert_batched_matches_alone(model, params=".*", rank=2, genes_list=GENES):
    assert supports_population(model)
    genome = LowRankGenome(ParamSpace(model, params), rank=rank)
    batch = Corpus.load(None, context=16).sample_batch(4, torch.Generator().manual_seed(0))
    batched = population_log_likelihood(model, batch, genome, genes_list)
    for genes, value in zip(genes_list, batched):
        genome.apply(model, genes)
        alone = mean_log_likelihood(model, batch)
        genome.undo(model, genes)
        assert value == pytest.approx(alone, abs=1e-4)
    assert batched[0] != pytest.approx(batched[1], abs=1e-6)
    assert all("forward" not in vars(module) for module in model.modules())  # the pass leaves the model as it was


class RMSNorm(nn.Module):
    """A norm torch has no replacement for: the pass runs its own forward per individual (vmap)."""

    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale


class TransposedLinear(nn.Module):
    """A weight stored (in, out) and applied with addmm, as Hugging Face GPT-2's Conv1D does."""

    def __init__(self, width_in, width_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width_in, width_out) / width_in**0.5)
        self.bias = nn.Parameter(torch.zeros(width_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class PositionTable(nn.Module):
    """Learned positions looked up by (1, T) ids, shared by every sequence (and every individual)."""

    def __init__(self, context, width):
        super().__init__()
        self.table = nn.Parameter(torch.randn(context, width) * 0.1)

    def forward(self, positions):
        return self.table[positions]


class NewModel(nn.Module):
    """A model evolm has never seen: custom position table, norm and layer, a time-major LSTM with an
    initial state; no population forward was written for it."""

    def __init__(self, vocab=256, width=32):
        super().__init__()
        torch.manual_seed(0)
        self.tokens = nn.Embedding(vocab, width)
        self.positions = PositionTable(16, width)
        self.norm = RMSNorm(width)
        self.mix = TransposedLinear(width, width)
        self.lstm = nn.LSTM(width, width, num_layers=2)  # batch_first=False: (T, B, width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens):
        x = self.tokens(tokens) + self.positions(torch.arange(tokens.shape[1]).unsqueeze(0))
        x = x + torch.tanh(self.mix(self.norm(x)))
        x = x.transpose(0, 1)
        start = torch.tanh(x[0]).expand(2, -1, -1)  # an initial state of each sequence's own: (layers, B, width)
        output, _ = self.lstm(x, (start, start))
        return self.head(output.transpose(0, 1))


def test_a_new_model_gets_the_batched_pass_without_a_forward_written_for_it():
    assert_batched_matches_alone(NewModel().eval())
    assert_batched_matches_alone(NewModel().eval(), params="positions|norm|mix|head", rank=1)


def test_a_hugging_face_gpt2_gets_the_batched_pass():
    transformers = pytest.importorskip("transformers")
    from evolm.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=256, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = HFCausalLM(transformers.GPT2LMHeadModel(config)).eval()
    assert model.model.lm_head.weight is model.model.transformer.wte.weight  # tied: perturbed in both places
    assert_batched_matches_alone(model)


@pytest.mark.parametrize("params", [".*", "blocks.0|head"])
def test_the_gpt_fast_path_equals_the_general_pass(params):
    config = build_config(
        overrides=[("model.width", 32), ("model.layers", 2), ("model.heads", 2), ("model.context", 16)]
    )
    model = build_model(config.model, 0).eval()
    genome = LowRankGenome(ParamSpace(model, params), rank=2)
    tokens = Corpus.load(None, context=16).sample_batch(4, torch.Generator().manual_seed(0)).inputs
    delta = PopulationDelta(genome, GENES, rows=tokens.shape[0])
    fast = gpt_population_logits(model, tokens, delta)
    torch.testing.assert_close(general_population_logits(model, tokens, delta), fast, atol=1e-5, rtol=1e-5)


def test_modules_that_use_their_weights_outside_their_forward_have_no_batched_pass():
    # nn.MultiheadAttention reads out_proj.weight without calling out_proj: a replaced forward would miss it.
    assert not supports_population(nn.Sequential(nn.MultiheadAttention(8, 2)))
    assert not supports_population(nn.GRU(8, 8))  # a fused recurrent kernel with no replacement
    assert not supports_population(nn.LSTM(8, 8, bidirectional=True))


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
