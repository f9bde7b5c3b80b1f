"""Genome encodings and their variation operators keep their promises."""

import pickle

import numpy as np
import pytest
import torch
from deap import tools

from evolm.config import build_config
from evolm.genome import (
    ALL_TENSORS,
    HyperGenome,
    LowRankGenome,
    ParamSpace,
    SeedGenome,
    VectorGenome,
    gene_entries,
)
from evolm.individuals import clone_individual, make_individual, make_vector_individual
from evolm.models import build_model
from evolm.seeding import scoped_python_random
from evolm.strategies.ga import RebaseUpdate
from evolm.strategies.variation import NoiseVariation, VectorVariation
from evolm.worker import Worker


def small_model(width=32):
    config = build_config(
        overrides=[
            ("model.width", width),
            ("model.layers", 1),
            ("model.heads", 2),
            ("model.ff", 2 * width),
            ("model.context", 16),
        ]
    )
    return build_model(config.model, 0)


@pytest.mark.parametrize("genome_class", [SeedGenome, LowRankGenome])
def test_noise_genomes_apply_then_undo_restore_exactly(genome_class):
    model = small_model()
    space = ParamSpace(model)
    genome = genome_class(space)
    before = [t.clone() for t in space.tensors]
    genes = [(5, 0.1), (9, -0.2, 0b101)]
    genome.apply(model, genes)
    changed = [not torch.equal(a, b) for a, b in zip(space.tensors, before)]
    assert all(changed)
    genome.undo(model, genes)
    assert all(torch.equal(a, b) for a, b in zip(space.tensors, before))


@pytest.mark.parametrize("genome_class", [SeedGenome, LowRankGenome])
def test_reused_noise_of_an_antithetic_partner_equals_fresh_noise(genome_class):
    """The buffer cache must give exactly what a fresh genome regenerates, whatever came before."""
    model = small_model()
    genome = genome_class(ParamSpace(model))
    fresh = genome_class(ParamSpace(small_model()))
    for seed in (3, 3, 4, 3, 4, 4):  # reuse, switch, switch back
        for index in range(len(genome.space.tensors)):
            assert torch.equal(genome.noise(seed, index), fresh.noise(seed, index))
        fresh = genome_class(ParamSpace(small_model()))  # a genome with an empty cache every time
    # The antithetic pair applied in a row lands exactly on base + eps and base - eps.
    base = [t.clone() for t in genome.space.tensors]
    for scale in (0.1, -0.1):
        genome.apply(model, [(8, scale)])
        expected = [torch.add(b, fresh.noise(8, i), alpha=scale) for i, b in enumerate(base)]
        assert all(torch.equal(t, e) for t, e in zip(genome.space.tensors, expected))
        genome.undo(model, [(8, scale)])


def test_lowrank_noise_has_the_configured_rank_and_vectors_stay_full_rank():
    model = small_model()
    space = ParamSpace(model)
    genome = LowRankGenome(space, rank=2)
    for index, tensor in enumerate(space.tensors):
        noise = genome.noise(11, index)
        if tensor.dim() == 2:
            assert torch.linalg.matrix_rank(noise).item() == 2
            a, b = genome.factors(11, index)
            torch.testing.assert_close(noise, a @ b.T / 2**0.5)


def test_tensor_mask_limits_the_perturbation():
    model = small_model()
    space = ParamSpace(model)
    before = [t.clone() for t in space.tensors]
    SeedGenome(space).apply(model, [(3, 0.5, 0b10)])
    assert [not torch.equal(a, b) for a, b in zip(space.tensors, before)] == [i == 1 for i in range(len(before))]


@pytest.mark.parametrize("genome_name", ["seed", "lowrank"])
def test_genome_bytes_do_not_grow_with_model_size(genome_name):
    sizes = []
    for width in (32, 256):  # about 25x more parameters
        model = small_model(width)
        space = ParamSpace(model)
        genome = SeedGenome(space) if genome_name == "seed" else LowRankGenome(space)
        individual = make_individual([(123456, 0.02), (654321, -0.02)])
        genome.apply(model, individual)  # the same few bytes perturb every parameter of either model
        assert not torch.equal(space.tensors[0], space._base[0])
        genome.undo(model, individual)
        sizes.append((space.numel, len(pickle.dumps(individual))))
    assert sizes[1][0] > 20 * sizes[0][0]
    assert sizes[0][1] == sizes[1][1] and sizes[0][1] < 300


def test_layer_crossover_children_take_each_tensor_from_one_parent():
    variation = NoiseVariation(tensors=6, crossover="layers")
    first, second = make_individual([(1, 0.1)]), make_individual([(2, 0.1), (3, -0.1)])
    child1, child2 = variation.crossover(clone_individual(first), clone_individual(second), np.random.default_rng(0))
    for child in (child1, child2):
        assert {seed for seed, _, _ in gene_entries(child)} <= {1, 2, 3}
        for tensor in range(6):
            owners = {1 if seed == 1 else 2 for seed, _, mask in gene_entries(child) if (mask >> tensor) & 1}
            assert len(owners) <= 1  # a tensor's perturbation comes from exactly one parent
    # Together the children hold exactly the parents' perturbations, tensor by tensor.
    for tensor in range(6):
        held = sorted(s for c in (child1, child2) for s, _, m in gene_entries(c) if (m >> tensor) & 1)
        assert held == [1, 2, 3]


def test_pair_crossover_and_mutation():
    variation = NoiseVariation(tensors=4, crossover="pairs")
    rng = np.random.default_rng(1)
    a, b = variation.crossover(make_individual([(1, 0.1), (2, 0.1)]), make_individual([(3, 0.1)]), rng)
    assert sorted(s for s, _, _ in gene_entries(a + b)) == [1, 2, 3]
    mutated = variation.mutate(make_individual([(1, 0.1)]), rng, 0.05)
    assert len(mutated) == 2 and mutated[0] == (1, 0.1) and mutated[1][1] == 0.05


def test_rebase_keeps_every_individual_s_weights():
    model = small_model()
    space = ParamSpace(model)
    genome = SeedGenome(space)
    variation = NoiseVariation(len(space.tensors))
    best = [(1, 0.1), (2, 0.05), (3, -0.02, 0b11)]
    other = [(1, 0.1), (7, 0.03)]
    genome.apply(model, other)
    expected = [t.clone() for t in space.tensors]
    genome.undo(model, other)

    worker = Worker(model, space, genome, fitness=None, optimizer_factory=None)
    RebaseUpdate(best).apply(worker)
    rebased = variation.rebased(other, best)
    assert (1, 0.1) not in rebased and len(rebased) == 3  # shared entry cancelled; best's others negated
    genome.apply(model, rebased)
    for value, reference in zip(space.tensors, expected):
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-6)


def test_vector_genome_and_deap_operators_copy_not_view():
    model = small_model()
    space = ParamSpace(model, "bias|norm")
    genome = VectorGenome(space)
    genes = np.linspace(-0.1, 0.1, genome.size).astype(np.float32)
    before = [t.clone() for t in space.tensors]
    genome.apply(model, genes)
    assert torch.allclose(space.flat(), torch.cat([b.reshape(-1) for b in before]) + torch.from_numpy(genes))
    genome.undo(model, genes)
    assert all(torch.equal(a, b) for a, b in zip(space.tensors, before))

    parent = make_vector_individual(np.zeros(genome.size))
    parent.fitness.values = (1.0,)
    child = clone_individual(parent)
    assert not np.shares_memory(child, parent)
    variation = VectorVariation("blend", "gaussian", indpb=1.0, bound=0.5)
    with scoped_python_random(0):
        variation.mutate(child, None, 0.1)
        other = clone_individual(parent)
        variation.crossover(child, other, None)
    assert np.all(parent == 0) and np.abs(child).max() <= 0.5 and not np.all(child == 0)
    hall = tools.HallOfFame(3, similar=np.array_equal)
    child.fitness.values, other.fitness.values = (2.0,), (3.0,)
    hall.update([parent, child, other])
    assert len(hall) == 3 and pickle.loads(pickle.dumps(hall[0])).fitness.values == (3.0,)


def test_hyper_genome_decodes_inside_bounds():
    genome = HyperGenome()
    values = genome.decode([0.0, 0.5, 1.0, 0.5])
    assert values["learning_rate"] == pytest.approx(1e-4)
    assert values["weight_decay"] == pytest.approx(0.05)
    assert values["dropout"] == pytest.approx(0.3)
    assert isinstance(values["batch_size"], int) and 8 <= values["batch_size"] <= 64
    assert genome.decode(genome.encode(values)) == pytest.approx(values)
    assert genome.decode([2.0, -1.0, 0.5, 0.5])["learning_rate"] == pytest.approx(3e-2)  # clipped to bounds
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    genome.apply(model, [0.5, 0.5, 1.0, 0.5])
    assert model[1].p == pytest.approx(0.3)
    genome.undo(model, None)
    assert model[1].p == 0.1


def test_individuals_pickle_with_their_fitness():
    individual = make_individual([(1, 0.5)])
    individual.fitness.values = (-2.5,)
    clone = pickle.loads(pickle.dumps(individual))
    assert clone == individual and clone.fitness.values == (-2.5,)
    assert ALL_TENSORS == -1


def multi_chunk_model():
    """A 600x600 matrix (360,000 values: two noise chunks) beside one-chunk tensors."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Linear(600, 8), torch.nn.LayerNorm(8))


@pytest.mark.parametrize("genome_class, rank", [(SeedGenome, 1), (LowRankGenome, 1), (LowRankGenome, 3)])
def test_chunked_noise_without_the_cache_equals_the_cached_noise(genome_class, rank):
    """A large model regenerates noise chunk by chunk into scratch; a small one caches whole tensors.
    Both must give the same bits (workers of one run may differ in which they use)."""
    from evolm.genome import CHUNK_ELEMENTS

    def make(cache_bytes):
        model = multi_chunk_model()
        space = ParamSpace(model)
        options = {"rank": rank} if genome_class is LowRankGenome else {}
        return model, space, genome_class(space, cache_bytes=cache_bytes, **options)

    cached_model, cached_space, cached = make(1 << 30)
    plain_model, plain_space, plain = make(0)
    assert cached.cached and not plain.cached
    assert cached_space.tensors[0].numel() > CHUNK_ELEMENTS  # the matrix really spans chunks
    for seed in (5, 5, 6):
        for index in range(len(cached_space.tensors)):
            assert torch.equal(cached.noise(seed, index), plain.noise(seed, index))
    genes = [(5, 0.1), (6, -0.2, 0b101)]
    cached.apply(cached_model, genes)
    plain.apply(plain_model, genes)
    assert all(torch.equal(a, b) for a, b in zip(cached_space.tensors, plain_space.tensors))
    cached.undo(cached_model, genes)
    plain.undo(plain_model, genes)
    assert all(torch.equal(a, b) for a, b in zip(cached_space.tensors, plain_space._base))
    for index in range(len(cached_space.tensors)):
        assert torch.equal(
            cached.combined_noise([5, 6, 7], [0.5, 0.0, -0.25], index),
            plain.combined_noise([5, 6, 7], [0.5, 0.0, -0.25], index),
        )
    # Without the cache, the genome holds two chunk-sized buffers, not a copy of the model.
    assert 0 < plain.buffer_bytes() <= 2 * 4 * CHUNK_ELEMENTS
    # Chunks have their own keys: the matrix's second chunk is not a repeat of its first.
    flat = plain.noise(5, 0).reshape(-1)
    if genome_class is SeedGenome:
        assert not torch.equal(flat[:1000], flat[CHUNK_ELEMENTS : CHUNK_ELEMENTS + 1000])


def test_one_chunk_noise_is_the_per_tensor_key_s_normal_draw():
    """Tensors of at most CHUNK_ELEMENTS values keep the noise of earlier versions (checkpoints and
    results stay reproducible): randn from a generator seeded with mix_seed(seed, tensor index)."""
    from evolm.seeding import mix_seed

    space = ParamSpace(small_model())
    genome = SeedGenome(space)
    for index, tensor in enumerate(space.tensors):
        expected = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(mix_seed(42, index)))
        assert torch.equal(genome.noise(42, index), expected)


def test_checksum_of_bfloat16_weights():
    """The fingerprint workers compare works for any dtype (``.numpy()`` has no bfloat16)."""
    import hashlib

    def worker(dtype):
        model = small_model().to(dtype)
        space = ParamSpace(model)
        return Worker(model, space, SeedGenome(space), fitness=None, optimizer_factory=None)

    bf16, again = worker(torch.bfloat16), worker(torch.bfloat16)
    assert bf16.checksum() == again.checksum()
    bf16.space.tensors[0][0, 0] += 1.0
    assert bf16.checksum() != again.checksum()
    # A bfloat16 genome applies and undoes exactly too.
    before = [t.clone() for t in again.space.tensors]
    again.genome.apply(again.model, [(3, 0.1)])
    assert not torch.equal(again.space.tensors[0], before[0])
    again.genome.undo(again.model, [(3, 0.1)])
    assert all(torch.equal(a, b) for a, b in zip(again.space.tensors, before))
    # float32: the same raw bytes as before (a checksum is comparable across versions).
    fp32 = worker(torch.float32)
    digest = hashlib.blake2b(digest_size=8)
    for tensor in fp32.space.tensors:
        digest.update(tensor.numpy().tobytes())
    assert fp32.checksum() == digest.hexdigest()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (noise drawn on the GPU)")
@pytest.mark.parametrize("genome_class", [SeedGenome, LowRankGenome])
def test_noise_is_drawn_on_the_device_of_the_tensor(genome_class):
    model = small_model().cuda()
    space = ParamSpace(model)
    genome = genome_class(space, cache_bytes=0)
    fresh = genome_class(ParamSpace(small_model().cuda()))
    for index, tensor in enumerate(space.tensors):
        noise = genome.noise(7, index)
        assert noise.device == tensor.device and torch.equal(noise, fresh.noise(7, index))
    before = [t.clone() for t in space.tensors]
    genome.apply(model, [(7, 0.1)])
    genome.undo(model, [(7, 0.1)])
    assert all(torch.equal(a, b) for a, b in zip(space.tensors, before))
