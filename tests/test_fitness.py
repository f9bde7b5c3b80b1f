"""Fitness terms on real (tiny) models: likelihood, self-score, diversity, margin, their combination."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY_SIZES

from evolm.config import build_config
from evolm.data import Corpus
from evolm.errors import UsageError
from evolm.fitness import (
    build_fitness,
    continuation_log_likelihood,
    mean_log_likelihood,
    with_novelty,
)
from evolm.fitness_terms import objective_count, parse_terms
from evolm.models import GPT, GPTConfig, LSTMConfig, LSTMLanguageModel
from evolm.seeding import scoped_torch_seed
from evolm.textstats import distinct_n, diversity_score, ngram_profile, novelty_scores, repetition_rate

torch.set_num_threads(1)

CONTEXT = 32
SMALL = [
    ("model.width", 32),
    ("model.layers", 1),
    ("model.heads", 2),
    ("model.ff", 64),
    ("model.context", CONTEXT),
    ("data.batch_size", 4),
    ("data.val_sequences", 8),
    ("strategy.population_size", 8),
    ("threads", 1),
    ("fitness.prompts", 4),
    ("fitness.prompt_tokens", 8),
    ("fitness.generate_tokens", 16),
]
FAVOURED = ord("e")


@pytest.fixture(scope="module")
def corpus():
    return Corpus.load(None, CONTEXT)


def make_config(terms="likelihood=1", strategy="es", **fitness):
    overrides = SMALL + [("fitness.terms", terms)] + [(f"fitness.{k}", v) for k, v in fitness.items()]
    config = build_config(overrides=overrides)
    # nsga2 lives in another module; the fitness only reads the strategy's name.
    config.strategy.name = strategy
    return config


def gpt(seed=0):
    with scoped_torch_seed(seed):
        return GPT(GPTConfig(context=CONTEXT, width=32, layers=1, heads=2, ff=64)).eval()


@torch.no_grad()
def constant_gpt():
    """Writes one byte whatever the text: the head ignores its input and its bias favours ``e`` by 30 nats."""
    model = gpt()
    model.head.weight.zero_()
    model.head.bias.zero_()
    model.head.bias[FAVOURED] = 30.0
    return model


@torch.no_grad()
def uniform_gpt():
    model = gpt()
    model.head.weight.zero_()
    model.head.bias.zero_()
    return model


def fitness_for(corpus, model, terms, strategy="es", **fitness):
    return build_fitness(make_config(terms, strategy, **fitness), corpus, torch.device("cpu"), model)


# --- pure helpers -------------------------------------------------------------------------------


def test_distinct_n_and_repetition_rate_on_known_sequences():
    looped = [1, 2, 3, 1, 2, 3]
    assert distinct_n(looped, 1) == pytest.approx(3 / 6)
    assert distinct_n(looped, 2) == pytest.approx(3 / 5)  # (1,2) (2,3) (3,1) (1,2) (2,3)
    assert repetition_rate(looped, 2) == pytest.approx(2 / 5)
    assert repetition_rate(torch.tensor([[7] * 10]), 4) == pytest.approx(1 - 1 / 7)
    assert repetition_rate(list(range(10)), 4) == 0.0
    # n-grams never cross rows; the same row twice repeats across rows (distinct) but not within (repetition).
    assert distinct_n(torch.tensor([[1, 2], [2, 1]]), 2) == 1.0
    assert distinct_n([[1, 2, 3], [1, 2, 3]], 2) == pytest.approx(0.5)
    assert repetition_rate([[1, 2, 3], [1, 2, 3]], 2) == 0.0
    assert distinct_n([[1]], 2) == 0.0 and repetition_rate([[1]], 2) == 0.0
    assert diversity_score(torch.arange(40).view(2, 20)) == 1.0


def test_continuation_log_likelihood_matches_token_by_token_scoring():
    model = gpt(3)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 256, (3, 5), generator=generator)
    continuations = torch.randint(0, 256, (3, 7), generator=generator)
    sequence = torch.cat([prompts, continuations], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(sequence[:, :-1]), dim=-1)
    expected = torch.stack([log_probs[:, 4 + i].gather(1, continuations[:, i : i + 1]) for i in range(7)]).mean()
    assert continuation_log_likelihood(model, prompts, continuations, CONTEXT) == pytest.approx(
        expected.item(), abs=1e-5
    )

    # Longer than the context: only the last CONTEXT tokens are seen; the first of them has no left context.
    long_prompts = torch.randint(0, 256, (2, 30), generator=generator)
    long_continuations = torch.randint(0, 256, (2, 40), generator=generator)
    window = torch.cat([long_prompts, long_continuations], dim=1)[:, -CONTEXT:]
    with torch.no_grad():
        log_probs = torch.log_softmax(model(window[:, :-1]), dim=-1)
    expected = log_probs.gather(2, window[:, 1:].unsqueeze(2)).mean()
    assert continuation_log_likelihood(model, long_prompts, long_continuations, CONTEXT) == pytest.approx(
        expected.item(), abs=1e-5
    )
    assert continuation_log_likelihood(uniform_gpt(), prompts, continuations, CONTEXT) == pytest.approx(
        -math.log(256), abs=1e-5
    )


# --- self-score and diversity on models with known behaviour -------------------------------------


def test_constant_model_scores_itself_high_and_has_no_diversity(corpus):
    model = constant_gpt()
    fitness = fitness_for(corpus, model, "self=1,diversity=1")
    scores = fitness.scores(model, fitness.context(0))
    assert scores["self"] > -1e-6  # it is sure of every byte it writes
    assert scores["diversity"] < 0.1 * math.log(256)  # the term counts the [0, 1] share in nats
    report = fitness.report(model, 0)
    assert report["self_score"] > -1e-6
    assert report["distinct_2"] < 0.01 and report["repetition_rate"] > 0.95


def test_uniform_model_has_high_diversity_and_low_self_score(corpus):
    model = uniform_gpt()
    fitness = fitness_for(corpus, model, "self=1,diversity=1")
    scores = fitness.scores(model, fitness.context(0))
    assert scores["self"] == pytest.approx(-math.log(256), abs=1e-4)
    assert scores["diversity"] > 0.85 * math.log(256)
    report = fitness.report(model, 0)
    assert report["distinct_2"] > 0.95 and report["repetition_rate"] < 0.05 and report["diversity"] > 0.85
    assert report["self_score"] == pytest.approx(-math.log(256), abs=1e-4)


def test_reference_scorer_is_the_model_as_built(corpus):
    model = uniform_gpt()
    fitness = fitness_for(corpus, model, "self=1", scorer="reference")
    with torch.no_grad():  # the candidate changes after build_fitness: now it writes one byte
        model.head.bias[FAVOURED] = 30.0
    context = fitness.context(0)
    # The frozen uniform scorer finds the candidate's "eeee..." exactly as unlikely as any text.
    assert fitness(model, context) == pytest.approx((-math.log(256),), abs=1e-4)
    assert fitness_for(corpus, model, "self=1")(model, context)[0] > -1e-6
    assert fitness.report(model, 0)["reference_score"] == pytest.approx(-math.log(256), abs=1e-4)


def test_margin_is_the_negated_perceptual_loss(corpus):
    model = gpt(1)
    fitness = fitness_for(corpus, model, "likelihood=1,self=1,margin=1", margin=2.5)
    scores = fitness.scores(model, fitness.context(0))
    assert scores["margin"] == pytest.approx(-max(0.0, 2.5 + scores["self"] - scores["likelihood"]))
    # The constant model likes its own text far more than real text: a large loss, a low fitness.
    constant = constant_gpt()
    constant_scores = fitness.scores(constant, fitness.context(0))
    assert constant_scores["margin"] < -10 and constant_scores["margin"] < scores["margin"]


def test_lstm_candidate_gets_every_term(corpus):
    with scoped_torch_seed(0):
        model = LSTMLanguageModel(LSTMConfig(width=32)).eval()
    fitness = fitness_for(corpus, model, "likelihood=1,self=1,diversity=1,margin=1", strategy="nsga2")
    values = fitness(model, fitness.context(0))
    assert len(values) == 4 and all(math.isfinite(v) for v in values)
    assert set(fitness.report(model, -1)) >= {"self_score", "distinct_2"}


# --- parsing and validation ----------------------------------------------------------------------


def test_parser_accepts_weighted_terms():
    assert parse_terms("likelihood=1,self=0.5,diversity=0.2") == [
        ("likelihood", 1.0),
        ("self", 0.5),
        ("diversity", 0.2),
    ]
    assert parse_terms(" margin = 0.3 , likelihood=1 ") == [("margin", 0.3), ("likelihood", 1.0)]
    assert parse_terms("self") == [("self", 1.0)]
    assert parse_terms("likelihood=1,diversity=0") == [("likelihood", 1.0), ("diversity", 0.0)]
    for terms in ("likelihood=1,self=0.5,diversity=0.2,margin=1", "self=2,diversity=1"):
        assert build_config(overrides=[("fitness.terms", terms)]).fitness.terms == terms


@pytest.mark.parametrize(
    "terms, message",
    [
        ("likeliness=1", "unknown term 'likeliness'"),
        ("self=abc", "weight of 'self'"),
        ("self=-1", "weight of 'self'"),
        ("self=nan", "weight of 'self'"),
        ("self=inf", "weight of 'self'"),
        ("", "is empty"),
        ("likelihood=1,,self=1", "empty term"),
        ("self=1,self=2", "appears twice"),
        ("self=0,diversity=0", "every weight"),
    ],
)
def test_parser_rejects_bad_terms_naming_the_field(terms, message):
    with pytest.raises(UsageError) as error:
        build_config(overrides=[("fitness.terms", terms)])
    assert "fitness.terms" in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("scorer", "oracle", "fitness.scorer"),
        ("prompts", 0, "fitness.prompts"),
        ("prompt_tokens", -1, "fitness.prompt_tokens"),
        ("generate_tokens", 0, "fitness.generate_tokens"),
        ("temperature", -0.5, "fitness.temperature"),
        ("margin", "nan", "fitness.margin"),
    ],
)
def test_other_fitness_fields_are_validated(key, value, message):
    with pytest.raises(UsageError, match=message):
        build_config(overrides=[(f"fitness.{key}", value)])


def test_novelty_with_pbt_is_refused_in_one_line():
    with pytest.raises(UsageError, match="fitness.terms: the novelty term needs a population") as error:
        build_config(
            overrides=[("fitness.terms", "likelihood=1,novelty=1"), ("strategy.name", "pbt"), ("genome.name", "hyper")]
        )
    assert "\n" not in str(error.value)


def test_ngram_profiles_measure_how_alike_two_texts_are():
    text = torch.tensor([list(b"the cat sat on the mat and the dog sat on the log")])
    same = ngram_profile(text)
    assert same.dtype.name == "float16" and same.shape == (256,) and same.nbytes == 512
    assert abs(float(np.linalg.norm(same.astype(np.float64))) - 1.0) < 1e-3
    shifted = ngram_profile(torch.tensor([list(b"the cat sat on the mat and the dog sat on the rug")]))
    other = ngram_profile(torch.tensor([list(b"zqxj vwkp 0123 9876 ZQXJ !?#% zqxj")]))
    constant = ngram_profile(torch.full((2, 40), ord("e")))
    near, far = novelty_scores([same, shifted])[0], novelty_scores([same, other])[0]
    assert 0.0 < near < far <= 1.0, (near, far)
    assert novelty_scores([constant, constant]) == pytest.approx([0.0, 0.0], abs=1e-3)
    # n-grams never cross rows: two rows are not one long row.
    assert not np.array_equal(
        ngram_profile(torch.tensor([[1, 2], [3, 4]])), ngram_profile(torch.tensor([[1, 2, 3, 4]]))
    )


def test_novelty_is_the_mean_distance_to_the_others_and_skips_diverged_ones():
    a, b, c = (np.eye(256, dtype=np.float16)[i] for i in range(3))
    assert novelty_scores([a, a, b]) == pytest.approx([0.5, 0.5, 1.0])
    assert novelty_scores([a, None, c]) == pytest.approx([1.0, 0.0, 1.0])
    assert novelty_scores([a]) == [0.0]


@pytest.mark.parametrize("strategy", ["es", "nsga2"])
def test_novelty_reaches_the_objectives_after_the_population_is_in(corpus, strategy):
    models = [gpt(0), constant_gpt(), uniform_gpt()]
    fitness = fitness_for(corpus, models[0], "likelihood=1,diversity=0.5,novelty=2", strategy)
    assert fitness.needs_population
    context = fitness.context(1)
    scored = [fitness.scored(model, context) for model in models]
    alone = [fitness(model, context) for model in models]
    assert [s.values for s in scored] == alone  # novelty 0 until the population is in
    novelty = novelty_scores([s.profile for s in scored])
    finished, shares = with_novelty(scored)
    assert shares == novelty
    for values, base, share in zip(finished, alone, novelty):
        if strategy == "nsga2":  # one objective per term, novelty last as written, in nats
            assert values[:2] == base[:2] and values[2] == pytest.approx(math.log(256) * share)
        else:
            assert values[0] == pytest.approx(base[0] + 2 * math.log(256) * share)
    assert all(share > 0 for share in novelty)
    assert with_novelty(alone) == (alone, None)  # plain tuples pass through


# --- combination ---------------------------------------------------------------------------------


def test_weighted_sum_is_one_objective_and_nsga2_gets_one_per_term(corpus):
    model = gpt(2)
    terms = "likelihood=1,self=0.5,diversity=0.2"
    weighted = fitness_for(corpus, model, terms)
    context = weighted.context(5)
    scores = weighted.scores(model, context)
    assert weighted.objectives == 1
    assert weighted(model, context) == pytest.approx(
        (scores["likelihood"] + 0.5 * scores["self"] + 0.2 * scores["diversity"],)
    )

    multi = fitness_for(corpus, model, terms, strategy="nsga2")
    assert multi.objectives == 3
    assert multi(model, multi.context(5)) == pytest.approx((scores["likelihood"], scores["self"], scores["diversity"]))
    # Order as written; a term of weight 0 is off in both modes.
    reordered = fitness_for(corpus, model, "diversity=1,self=0,likelihood=2", strategy="nsga2")
    assert reordered.objectives == 2 == objective_count(make_config("diversity=1,self=0,likelihood=2", "nsga2"))
    assert reordered(model, reordered.context(5)) == pytest.approx((scores["diversity"], scores["likelihood"]))
    assert fitness_for(corpus, model, "likelihood=1,self=1,diversity=0").scores(model, context).keys() == {
        "likelihood",
        "self",
    }


def test_likelihood_only_keeps_its_batch_and_token_count(corpus):
    model = gpt()
    fitness = fitness_for(corpus, model, "likelihood=1")
    context = fitness.context(0)
    assert context.prompts is None
    assert fitness(model, context) == (mean_log_likelihood(model, context.batch),)
    assert fitness.tokens(context) == context.batch.num_tokens == 4 * CONTEXT
    # Generation costs prefill + one token per step; scoring one forward of prompt + continuation.
    full = fitness_for(corpus, model, "likelihood=1,self=1,diversity=1")
    assert full.tokens(full.context(0)) == 4 * CONTEXT + 4 * (8 + 15) + 4 * (8 + 16 - 1)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
@pytest.mark.parametrize("strategy", ["es", "nsga2"])
def test_diverged_model_scores_minus_infinity_without_crashing(corpus, temperature, strategy):
    model = gpt()
    fitness = fitness_for(corpus, model, "likelihood=1,self=1,diversity=1,margin=1", strategy, temperature=temperature)
    with torch.no_grad():
        model.blocks[0].fc.weight.fill_(math.nan)
    with pytest.warns(RuntimeWarning, match="-inf"):
        values = fitness(model, fitness.context(0))
    assert values == (-math.inf,) * fitness.objectives
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        report = fitness.report(model, 0)
    assert {"self_score", "distinct_2"} <= report.keys()
    assert all(math.isnan(v) or v == -math.inf or math.isfinite(v) for v in report.values())


def test_context_is_deterministic_per_generation_and_leaves_global_rng_alone(corpus):
    model = gpt()
    fitness = fitness_for(corpus, model, "likelihood=1,self=1,diversity=1")
    rng_state = torch.get_rng_state()
    first, again, other = fitness.context(3), fitness.context(3), fitness.context(4)
    fresh = fitness_for(corpus, gpt(), "likelihood=1,self=1,diversity=1").context(3)  # e.g. another Ray actor
    assert torch.equal(torch.get_rng_state(), rng_state)
    for context in (again, fresh):
        assert torch.equal(first.batch.inputs, context.batch.inputs)
        assert torch.equal(first.prompts, context.prompts) and first.sampling_seed == context.sampling_seed
    assert not torch.equal(first.prompts, other.prompts) and first.sampling_seed != other.sampling_seed
    # The same individual on the same context scores the same, whatever came between.
    score = fitness(model, first)
    fitness(model, other)
    assert fitness(model, first) == score
    assert fitness.report(model, 0) == fitness.report(model, 7)  # fixed prompts and seed


# --- end to end -----------------------------------------------------------------------------------


# Self-feedback collapse in 40 generations: tiny GPT, population 16, learning rate 0.1 so that the self
# term has time to reward over-confident, repetitive text.
COLLAPSE = [
    *TINY_SIZES,
    ("strategy.population_size", 16),
    ("strategy.learning_rate", 0.1),
    ("strategy.sigma", 0.02),
    ("generations", 40),
]


def collapse_run(out, terms):
    """The metrics rows and final distinct-2 of a COLLAPSE run with these fitness terms."""
    from evolm.engine import run

    run(build_config(overrides=[*COLLAPSE, ("fitness.terms", terms)]), out, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())["distinct_2_final"]


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory):
    """Metrics rows and final distinct-2 of the COLLAPSE run without any diversity term: the reference both
    tests compare to (run once)."""
    return collapse_run(tmp_path_factory.mktemp("collapse") / "plain", "likelihood=1,self=1")


@pytest.mark.slow
def test_diversity_term_keeps_a_run_more_diverse(tmp_path, collapsed):
    """Self-feedback alone collapses the generations; the diversity term holds them apart.

    COLLAPSE with likelihood=1,self=1 and diversity=1 or 0. Measured (seed 0, torch 2.13 CPU):
    distinct_2 1.00 -> 0.62 with diversity=1 vs 1.00 -> 0.10 with diversity=0 (self_score -3.8 vs -0.6).
    Seeds 1-7 gave 0.73 vs 0.14, 0.58 vs 0.28, 0.67 vs 0.25, 0.65 vs 0.17, 0.52 vs 0.05, 0.75 vs 0.32,
    0.74 vs 0.08.
    About 30 s on one thread.
    """
    finals = {"1": collapse_run(tmp_path / "diversity1", "likelihood=1,self=1,diversity=1")[1], "0": collapsed[1]}
    assert finals["1"] > finals["0"], finals


@pytest.mark.slow
def test_novelty_term_keeps_a_run_more_diverse(tmp_path, collapsed):
    """Novelty rewards writing unlike the rest of the population, which also holds off collapse.

    COLLAPSE with likelihood=1,self=1 plus novelty=5 or not. Measured distinct_2 at the end (torch 2.13 CPU):
    seed 0: 0.81 with novelty vs 0.10 without; seeds 1-3: 0.72 vs 0.14, 0.80 vs 0.28, 0.51 vs 0.25.
    Population novelty (novelty_mean) stays about 0.1 with the term. About 20 s on one thread.
    """
    rows, novel = collapse_run(tmp_path / "novelty5", "likelihood=1,self=1,novelty=5")
    plain_rows, plain = collapsed
    assert all("novelty_mean" in row for row in rows) and not any("novelty_mean" in row for row in plain_rows)
    assert novel > plain + 0.2, (novel, plain)
