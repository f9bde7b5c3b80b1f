"""The gradient baselines (adam, reinforce, mezo): each lowers its own loss on a tiny model, writes the
run files of an evolution run, keeps to its budget, and repeats itself exactly under the same seed."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_SIZES
from safetensors.torch import load_file

from evolm.baselines import BASELINES, TokenEnvironment
from evolm.baselines.mezo import perturb, perturbation_genome
from evolm.baselines.reinforce import rewards_to_go
from evolm.config import build_config, config_from_dict
from evolm.config_io import load_toml
from evolm.data import Corpus
from evolm.errors import UsageError
from evolm.models import build_model
from evolm.seeding import mix_seed, torch_generator

TINY = TINY_SIZES
# Short self-feedback episodes that fit the tiny context (prompt + continuation - 1 <= 32).
EPISODES = {"prompt_tokens": 8, "generate_tokens": 16}
# Small budgets per method: adam and mezo have tiny-model learning rates (the defaults suit the 137k reference model).
QUICK = {
    "adam": {"batch_size": 8, "log_every": 10},
    "mezo": {"learning_rate": 1e-2, "log_every": 100},
    "reinforce": {"learning_rate": 1e-2, "episodes": 16, "log_every": 5, **EPISODES},
}
METRIC_KEYS = {
    "generation",
    "wall_seconds",
    "evaluations",
    "forward_tokens",
    "best_fitness",
    "mean_fitness",
    "std_fitness",
    "val_loss",
}
SUMMARY_KEYS = {
    "method",
    "generations",
    "evaluations",
    "forward_tokens",
    "wall_seconds",
    "val_loss_initial",
    "val_loss_final",
    "best_fitness",
    "peak_rss_mb",
}


@pytest.fixture(scope="module")
def tiny_config():
    return build_config(overrides=TINY)


@pytest.fixture(scope="module")
def corpus(tiny_config):
    return Corpus.load(None, tiny_config.model.context)


def quiet(message):
    pass


def metrics_of(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def check_run_folder(folder, config, summary, method):
    """The four files of an evolution run, with the schema compare and plots rely on."""
    lines = metrics_of(folder)
    assert lines and all(METRIC_KEYS <= set(line) for line in lines)
    assert [line["generation"] for line in lines] == sorted({line["generation"] for line in lines})
    assert all(math.isfinite(line["val_loss"]) and math.isfinite(line["mean_fitness"]) for line in lines)
    on_disk = json.loads((folder / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(on_disk) and on_disk["method"] == method
    assert on_disk["generations"] == lines[-1]["generation"] + 1 == summary["generations"]
    assert (
        on_disk["forward_tokens"] == lines[-1]["forward_tokens"] and on_disk["evaluations"] == lines[-1]["evaluations"]
    )
    assert on_disk["val_loss_final"] == pytest.approx(lines[-1]["val_loss"])
    assert on_disk["best_fitness"] == pytest.approx(max(line["best_fitness"] for line in lines))
    assert on_disk["peak_rss_mb"] > 10
    assert config_from_dict(load_toml(folder / "config.toml")) == config
    # The saved weights are the final model: they reproduce the final validation loss.
    model = build_model(config.model, config.seed)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    val = Corpus.load(None, config.model.context).validation_batch(config.data.val_sequences)
    with torch.no_grad():
        logits = model.eval()(val.inputs)
    assert F.cross_entropy(logits.reshape(-1, logits.shape[-1]), val.targets.reshape(-1)).item() == pytest.approx(
        on_disk["val_loss_final"], abs=1e-5
    )


def test_registry_has_every_baseline():
    assert set(BASELINES) == {"adam", "reinforce", "mezo", "grpo", "rloo"}


def test_adam_lowers_validation_loss(tiny_config, tmp_path):
    # 40 steps of 8x32 tokens, stopped by the token budget.
    summary = BASELINES["adam"](tiny_config, tmp_path / "adam", budget_tokens=40 * 8 * 32, log=quiet, **QUICK["adam"])
    check_run_folder(tmp_path / "adam", tiny_config, summary, "adam")
    assert summary["generations"] == 40 and summary["forward_tokens"] == 40 * 8 * 32
    # From ln(256) = 5.55 nats (measured: 5.75 -> 3.11) in 40 steps.
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 1.5, summary
    lines = metrics_of(tmp_path / "adam")
    assert lines[-1]["mean_fitness"] > lines[0]["mean_fitness"]  # the training loss falls as well


def test_mezo_lowers_validation_loss(tiny_config, tmp_path):
    summary = BASELINES["mezo"](tiny_config, tmp_path / "mezo", steps=300, log=quiet, **QUICK["mezo"])
    check_run_folder(tmp_path / "mezo", tiny_config, summary, "mezo")
    assert summary["evaluations"] == 600  # two perturbed forwards per step
    assert summary["forward_tokens"] == 300 * 2 * 8 * 32
    # Measured: 5.75 -> 3.91 nats in 300 steps.
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 1.0, summary


def test_reinforce_raises_its_self_score(tiny_config, tmp_path):
    summary = BASELINES["reinforce"](tiny_config, tmp_path / "reinforce", steps=25, log=quiet, **QUICK["reinforce"])
    check_run_folder(tmp_path / "reinforce", tiny_config, summary, "reinforce")
    lines = metrics_of(tmp_path / "reinforce")
    # Its own objective: the mean log-likelihood of its generations under the frozen initial model, on
    # the training episodes (fitness; measured -5.37 -> -5.22 nats per token) and on the fixed report
    # prompts (self_score; measured -5.36 -> -5.15). Longer runs collapse onto the scorer's favourite tokens.
    assert lines[-1]["mean_fitness"] > lines[0]["mean_fitness"] + 0.05, lines
    assert summary["self_score_final"] > summary["self_score_initial"] + 0.1, summary
    assert summary["forward_tokens"] == 25 * 3 * 16 * (8 + 16 - 1)


@pytest.mark.parametrize("method", ["adam", "mezo", "reinforce"])
def test_same_seed_gives_the_same_metrics(method, tmp_path):
    config = build_config(overrides=TINY + [("seed", 3)])
    runs = [metrics_of(_run(method, config, tmp_path / f"{method}-{index}")) for index in range(2)]
    for lines in runs:
        for line in lines:
            line.pop("wall_seconds")
            line.pop("compute_seconds")
    assert runs[0] == runs[1]
    other = metrics_of(_run(method, build_config(overrides=TINY + [("seed", 4)]), tmp_path / f"{method}-other"))
    assert [line["val_loss"] for line in other] != [line["val_loss"] for line in runs[0]]


def _run(method, config, folder):
    steps = {"adam": 10, "mezo": 100, "reinforce": 5}[method]
    BASELINES[method](config, folder, steps=steps, log=quiet, **QUICK[method])
    return folder


def test_budgets_whichever_comes_first(tiny_config, tmp_path):
    # The token budget is never exceeded: 1000 tokens hold three steps of 256 forward tokens, not four.
    summary = BASELINES["adam"](
        tiny_config, tmp_path / "tokens", budget_tokens=1000, budget_seconds=60, log=quiet, batch_size=8
    )
    assert summary["forward_tokens"] == 768 and summary["generations"] == 3
    # A time budget stops a run whose token budget is far away (at most one step past it).
    summary = BASELINES["mezo"](tiny_config, tmp_path / "seconds", budget_seconds=0.5, budget_tokens=10**12, log=quiet)
    assert 0 < summary["generations"] and summary["wall_seconds"] < 5
    assert summary["budget_seconds"] == 0.5


def test_token_environment_rewards_are_the_scorers_log_probabilities(tiny_config, corpus):
    scorer = build_model(tiny_config.model, tiny_config.seed).eval()
    environment = TokenEnvironment(
        scorer, corpus, episodes=4, prompt_tokens=8, generate_tokens=6, generator=torch_generator(0, "test")
    )
    observation, info = environment.reset()
    assert observation.shape == (4, 8) and info == {}
    rewards, actions, truncated, steps = [], [], False, 0
    actor = torch_generator(1)
    while not truncated:
        action = torch.randint(0, 256, (4,), generator=actor)
        observation, reward, terminated, truncated, _ = environment.step(action)
        assert not terminated and reward.shape == (4,)
        rewards.append(reward)
        actions.append(action)
        steps += 1
    assert steps == 6 and observation.shape == (4, 14)
    assert torch.equal(observation[:, 8:], torch.stack(actions, dim=1))
    # The return over the length is the mean log-likelihood of the continuation under the scorer.
    with torch.no_grad():
        log_probs = F.log_softmax(scorer(observation[:, :-1]), dim=-1)[:, 7:].gather(2, observation[:, 8:].unsqueeze(2))
    assert torch.allclose(torch.stack(rewards, dim=1), log_probs.squeeze(2), atol=1e-5)
    assert environment.forward_tokens == 4 * (8 + 6 - 1)
    # reset draws fresh prompts; reset(seed=...) repeats them.
    first, _ = environment.reset(seed=5)
    assert not torch.equal(environment.reset()[0], first)
    assert torch.equal(environment.reset(seed=5)[0], first)


def test_rewards_to_go():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    assert rewards_to_go(rewards).tolist() == [[6.0, 5.0, 3.0]]


def test_mezo_perturbation_is_seeded_per_tensor_and_undone(tiny_config):
    model = build_model(tiny_config.model, tiny_config.seed)
    parameters = list(model.parameters())
    before = [p.detach().clone() for p in parameters]
    genome = perturbation_genome(model, ".*")
    perturb(genome, seed=11, scale=1e-3)
    first = [p.detach() - b for p, b in zip(parameters, before)]
    perturb(genome, seed=11, scale=-2e-3)
    perturb(genome, seed=11, scale=1e-3)
    assert all(torch.allclose(p, b, atol=1e-6) for p, b in zip(parameters, before))
    # Same-shaped tensors (the block's two layer-norm weights) get different noise.
    shapes = [p.shape for p in parameters]
    twins = [i for i, s in enumerate(shapes) if shapes.count(s) > 1 and len(s) == 1][:2]
    assert not torch.allclose(first[twins[0]], first[twins[1]])


def test_mezo_noise_is_the_seed_genomes_without_a_cache(tiny_config):
    """z(s) of tensor i is drawn from mix_seed(s, i), as MeZO drew it before it used the seed genome
    (tensors under one chunk), so earlier MeZO figures stay valid; no whole-model noise is cached."""
    model = build_model(tiny_config.model, tiny_config.seed)
    genome = perturbation_genome(model, ".*")
    before = [p.detach().clone() for p in model.parameters()]
    perturb(genome, seed=11, scale=0.5)
    for index, (parameter, base) in enumerate(zip(model.parameters(), before)):
        noise = torch.randn(parameter.shape, generator=torch.Generator().manual_seed(mix_seed(11, index)))
        assert torch.equal(parameter.detach(), base.add(noise, alpha=0.5))
    assert not genome.cached and genome.buffer_bytes() == 0


def test_bad_options_are_usage_errors(tiny_config, tmp_path):
    with pytest.raises(UsageError, match="learning_rate"):
        BASELINES["adam"](tiny_config, tmp_path / "a", steps=1, log=quiet, learning_rate=0)
    with pytest.raises(UsageError, match="model.context"):
        BASELINES["reinforce"](tiny_config, tmp_path / "b", steps=1, log=quiet, prompt_tokens=16, generate_tokens=32)
    with pytest.raises(UsageError, match="budget_tokens"):
        BASELINES["mezo"](tiny_config, tmp_path / "c", budget_tokens=-5, log=quiet)
    with pytest.raises(TypeError):
        BASELINES["mezo"](tiny_config, tmp_path / "d", steps=1, log=quiet, no_such_option=1)
    # An earlier run is never overwritten by accident.
    BASELINES["adam"](tiny_config, tmp_path / "e", steps=1, log=quiet, batch_size=8)
    with pytest.raises(UsageError, match="already holds a run"):
        BASELINES["adam"](tiny_config, tmp_path / "e", steps=1, log=quiet, batch_size=8)


def test_a_diverging_run_stops_with_its_scores_logged(tiny_config, tmp_path):
    summary = BASELINES["mezo"](tiny_config, tmp_path / "mezo", steps=2000, log=quiet, learning_rate=10.0)
    assert summary["diverged"] and summary["generations"] < 2000
    assert (tmp_path / "mezo" / "model.safetensors").exists()


def test_mezo_holds_one_model_and_reports_its_own_score(tiny_config, tmp_path):
    """mezo needs no frozen copy of the initial model (its report follows fitness.scorer, self by
    default): it adds nothing model-sized over inference. With scorer=reference the copy is built."""
    from evolm.baselines import BaselineRun

    run = BaselineRun("mezo", tiny_config, tmp_path / "own", steps=1)
    try:
        assert run._reference is None
        assert run.report_initial["self_score"] < 0
    finally:
        run.close()
    judged = BaselineRun(
        "mezo", build_config(overrides=[*TINY, ("fitness.scorer", "reference")]), tmp_path / "judged", steps=1
    )
    try:
        assert judged._reference is not None
        assert judged.report_initial["self_score"] == pytest.approx(
            run.report_initial["self_score"]
        )  # same model at the start
    finally:
        judged.close()
