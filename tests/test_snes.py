"""snes, separable NES (evolm.strategies.snes): the update is NES's formula, the per-value step sizes adapt
and stay positive, a lowrank genome's stay rank one (the batched pass agrees with scoring one at a time),
Ray gives the in-process metrics (also resumed on fresh actors), a resumed run equals an uninterrupted
one, a tiny language model learns, and bad settings are one line naming the field."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SIZES, read_metrics, run_cli, without_wall_clock
from test_resume import Interrupted, interrupting_factory

from evolm.assembly import worker_from_config
from evolm.checkpoint import load_checkpoint
from evolm.config import build_config
from evolm.engine import resume, run, step_generation
from evolm.errors import UsageError
from evolm.evaluators import LocalEvaluator
from evolm.genome import CHUNK_ELEMENTS, LowRankGenome, ParamSpace, SeedGenome
from evolm.individuals import genes_of
from evolm.strategies import make_strategy
from evolm.strategies.shaping import nes_utilities
from evolm.strategies.snes import SnesUpdate, nes_sigma_learning_rate
from evolm.worker import Worker

TINY = [
    *TINY_SIZES,
    ("strategy.name", "snes"),
    ("strategy.population_size", 16),
]


def tiny_config(*extra):
    return build_config(overrides=[*TINY, *extra])


def quiet(*args):
    pass


def evolve(config, generations):
    """The driver's worker and strategy after ``generations`` in-process generations."""
    worker = worker_from_config(config)
    strategy = make_strategy(config, worker)
    evaluator = LocalEvaluator(worker)
    rows = [step_generation(strategy, evaluator, generation)[0] for generation in range(generations)]
    return worker, strategy, rows


# --- the update ------------------------------------------------------------------------------------------------


def test_nes_utilities_sum_to_zero_decrease_with_rank_and_share_ties():
    values = np.array([0.3, -1.0, 2.0, float("nan"), 0.3, -math.inf])
    u = nes_utilities(values)
    assert abs(u.sum()) < 1e-12
    assert u[2] > u[0] == u[4] > u[1] == u[3] == u[5] == -1 / 6  # the worse half shares -1/2
    ranked = nes_utilities(np.arange(48.0))
    assert np.all(np.diff(ranked) >= 0) and ranked[-1] > 0 > ranked[0]
    assert ranked[:24].sum() == pytest.approx(-0.5) and ranked[24:].sum() == pytest.approx(0.5)


@pytest.mark.parametrize("genome", ["seed", "lowrank"])
def test_one_update_is_the_snes_formula(genome):
    """After one update (from step sizes already apart), the center and the step sizes are NES's:
    mu += sigma * sum c_k eps_k and sigma *= exp(sum w_k (eps_k^2 - 1)); a lowrank matrix's log step
    is that, projected onto row + column."""
    config = tiny_config(("genome.name", genome), ("genome.params", "head|fc_out"))
    worker, _, _ = evolve(config, 3)  # the step sizes have moved apart
    genome_ = worker.genome
    sizes = genome_.step_sizes
    before = [t.clone() for t in worker.space.tensors]
    factors = [t.clone() for t in sizes.full]
    seeds, center, spread = [11, 22, 33], [0.02, -0.01, 0.005], [0.01, 0.03, -0.02]
    genome_.step_sizes = None  # for a moment: the noise itself, eps
    raw = [[genome_.noise(seed, i).clone() for i in range(len(before))] for seed in seeds]
    genome_.step_sizes = sizes
    SnesUpdate(seeds, center, spread).apply(worker)
    for i, tensor in enumerate(worker.space.tensors):
        step = sum(c * raw[k][i] for k, c in enumerate(center))
        torch.testing.assert_close(tensor, before[i] + factors[i] * step, rtol=1e-5, atol=1e-7)
        log_step = sum(w * (raw[k][i] ** 2 - 1) for k, w in enumerate(spread))
        if sizes.factors[i] is not None:  # least squares onto log r_i + log c_j
            log_step = log_step.mean(1, keepdim=True) + log_step.mean(0, keepdim=True) - log_step.mean()
        torch.testing.assert_close(sizes.full[i], factors[i] * log_step.exp(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("genome_class", [SeedGenome, LowRankGenome])
def test_a_large_model_s_chunked_update_equals_the_cached_one(genome_class):
    """A large model regenerates noise chunk by chunk (a 600x600 matrix spans two chunks; a lowrank
    matrix's row and column sums gather over them): the same center and step sizes as the cached path."""

    def make(cache_bytes):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.Linear(600, 8), torch.nn.LayerNorm(8))
        space = ParamSpace(model)
        return Worker(model, space, genome_class(space, cache_bytes=cache_bytes), None, None)

    cached, chunked = make(1 << 30), make(0)
    assert cached.genome.cached and not chunked.genome.cached
    assert cached.space.tensors[0].numel() > CHUNK_ELEMENTS
    for k in range(3):
        update = SnesUpdate([7 + k, 70 + k], [0.03, -0.02], [0.2, -0.1])
        update.apply(cached)
        update.apply(chunked)
    exact = genome_class is SeedGenome  # elementwise only; lowrank sums its rows and columns by chunk
    for ours, theirs in [
        *zip(cached.space.tensors, chunked.space.tensors),
        *zip(cached.genome.step_sizes.full, chunked.genome.step_sizes.full),
    ]:
        assert torch.equal(ours, theirs) if exact else torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    if exact:
        assert cached.checksum() == chunked.checksum()  # weights and step sizes, as Ray compares them
    genes = [(5, 0.02)]
    with cached.applied(genes), chunked.applied(genes):
        torch.testing.assert_close(cached.space.tensors[0], chunked.space.tensors[0], rtol=1e-6, atol=1e-8)


def test_step_sizes_adapt_per_parameter_and_stay_positive():
    worker, strategy, rows = evolve(tiny_config(), 8)
    full = torch.cat([t.reshape(-1) for t in worker.genome.step_sizes.full])
    assert full.numel() == worker.space.numel
    assert torch.isfinite(full).all() and (full > 0).all()
    assert full.std() > 1e-3 and full.max() / full.min() > 1.05  # each value its own step size
    assert rows[0]["sigma_min"] == rows[0]["sigma_max"] == 0.02  # every value starts at strategy.sigma
    assert rows[-1]["sigma_min"] < 0.02 < rows[-1]["sigma_max"]
    assert strategy.sigma_learning_rate == nes_sigma_learning_rate(worker.space.numel)


def test_lowrank_step_sizes_stay_rank_one_and_the_batched_pass_agrees():
    """A lowrank matrix's step sizes are outer(row, column): its perturbation stays low-rank, and
    EGGROLL's batched pass (the factors scaled) scores as applying the genome in place does."""
    config = tiny_config(("genome.name", "lowrank"), ("genome.rank", 2))
    worker, strategy, _ = evolve(config, 4)
    sizes = worker.genome.step_sizes
    matrices = [i for i, t in enumerate(worker.space.tensors) if t.dim() == 2]
    assert matrices and all(sizes.factors[i] is not None for i in matrices)
    for i in matrices:
        rows, cols = sizes.factors[i]
        assert torch.equal(sizes.full[i], torch.outer(rows, cols))
        assert rows.std() > 0 and cols.std() > 0
        assert torch.linalg.matrix_rank(sizes.full[i]) == 1
    population = [genes_of(individual) for individual in strategy.ask(4)[:4]]
    one_at_a_time = worker.evaluate(population, 4)
    worker.population_chunk = 4
    batched = worker.evaluate(population, 4)
    np.testing.assert_allclose(np.array(batched), np.array(one_at_a_time), rtol=1e-4)


# --- runs ------------------------------------------------------------------------------------------------------


def test_snes_lowers_the_validation_loss_of_a_tiny_language_model(tmp_path):
    summary = run(tiny_config(("generations", 12)), tmp_path / "run", progress=False, log=quiet)
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.05, summary
    assert summary["strategy"] == "snes"
    rows = read_metrics(tmp_path / "run")
    assert all(0 < row["sigma_min"] <= row["sigma_mean"] <= row["sigma_max"] for row in rows)


@pytest.mark.parametrize("genome", ["seed", "lowrank"])
def test_snes_runs_a_task(tmp_path, genome):
    """A reward without a gradient as fitness (self-feedback), as es runs it."""
    task = [("task.name", "self-feedback"), ("task.batch", 4), ("task.heldout", 8), ("report_every", 1)]
    config = tiny_config(("genome.name", genome), ("strategy.population_size", 8), ("generations", 3), *task)
    summary = run(config, tmp_path / "run", progress=False, log=quiet)
    rows = read_metrics(tmp_path / "run")
    assert summary["task"] == "self-feedback" and len(rows) == 3
    assert all(math.isfinite(row["reward"]) and row["sigma_min"] > 0 for row in rows)
    assert rows[-1]["sigma_min"] < rows[-1]["sigma_max"]  # the step sizes moved on the task's fitness


@pytest.mark.parametrize("genome", ["seed", "lowrank"])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, genome):
    config = tiny_config(("genome.name", genome), ("generations", 6), ("checkpoint_every", 1), ("report_every", 1))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(config, whole, progress=False, log=quiet)
    with pytest.raises(Interrupted):
        run(config, cut, progress=False, log=quiet, worker_factory=interrupting_factory(4))
    checkpoint = load_checkpoint(cut)
    assert checkpoint["state"]["optimizer"]["step_sizes"], "the step sizes are not in the checkpoint"
    resume(cut, progress=False, log=quiet)
    assert without_wall_clock(read_metrics(cut)) == without_wall_clock(read_metrics(whole))
    for name in ("summary.json",):
        ours, theirs = (json.loads((d / name).read_text()) for d in (cut, whole))
        assert ours["val_loss_final"] == theirs["val_loss_final"]


def test_ray_gives_the_in_process_metrics_also_resumed_on_fresh_actors(ray_runtime, tmp_path, monkeypatch):
    """Two Ray actors apply every update to their own step sizes (checked by checksum each generation);
    interrupted in generation 3 and resumed, fresh actors load the step sizes from the driver's checkpoint."""
    import evolm.engine

    config = tiny_config(("generations", 5), ("checkpoint_every", 1))
    run(config, tmp_path / "local", progress=False, log=quiet)
    local = without_wall_clock(read_metrics(tmp_path / "local"))

    def comparable(rows):
        return [{k: v for k, v in row.items() if not k.startswith("evaluator_")} for row in without_wall_clock(rows)]

    on_ray = tiny_config(("generations", 5), ("checkpoint_every", 1), ("evaluator.workers", 2))
    run(on_ray, tmp_path / "ray", progress=False, log=quiet)
    rows = read_metrics(tmp_path / "ray")
    assert comparable(rows) == local
    assert all(row["evaluator_actors_alive"] == 2 for row in rows)

    real_make_evaluator = evolm.engine.make_evaluator

    def interrupting(config, worker):
        evaluator = real_make_evaluator(config, worker)

        def interrupt(evaluator, generation, chunk_index):
            if generation == 3:
                raise KeyboardInterrupt

        evaluator.on_chunk_done = interrupt
        return evaluator

    monkeypatch.setattr(evolm.engine, "make_evaluator", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(on_ray, tmp_path / "cut", progress=False, log=quiet)
    monkeypatch.setattr(evolm.engine, "make_evaluator", real_make_evaluator)
    resume(tmp_path / "cut", progress=False, log=quiet)
    rows = read_metrics(tmp_path / "cut")
    assert comparable(rows) == local
    assert rows[3]["evaluator_resyncs"] == 2  # both new actors caught up with the checkpoint's step sizes


@pytest.mark.parametrize("genome", ["seed", "lowrank"])
def test_threads_replicas_get_the_step_sizes_and_give_the_in_process_metrics(tmp_path, genome):
    """The driver alone applies updates; each replica copies its weights and step sizes every generation."""
    config = tiny_config(("genome.name", genome), ("generations", 4), ("report_every", 1))
    run(config, tmp_path / "local", progress=False, log=quiet)
    threads = tiny_config(
        ("genome.name", genome),
        ("generations", 4),
        ("report_every", 1),
        ("evaluator.workers", 2),
        ("evaluator.backend", "threads"),
    )
    run(threads, tmp_path / "threads", progress=False, log=quiet)
    local, rows = (without_wall_clock(read_metrics(tmp_path / d)) for d in ("local", "threads"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("evaluator_")} for r in rows]  # noqa: E731
    assert strip(rows) == strip(local)
    assert rows[-1]["sigma_max"] != rows[0]["sigma_max"]  # the step sizes moved: the replicas had to follow them


# --- configuration ---------------------------------------------------------------------------------------------


def test_choosing_snes_chooses_its_defaults_and_leaves_es_alone():
    snes, es = build_config(overrides=[("strategy.name", "snes")]), build_config()
    assert snes.strategy.learning_rate == 2.0 and es.strategy.learning_rate == 0.01
    assert (snes.genome.name, snes.strategy.utilities, snes.strategy.mirrored) == ("seed", "nes", True)
    explicit = build_config(overrides=[("strategy.learning_rate", 0.5), ("strategy.name", "snes")])
    assert explicit.strategy.learning_rate == 0.5


@pytest.mark.parametrize(
    "setting, field",
    [
        (("strategy.utilities", "softmax"), "strategy.utilities"),
        (("strategy.population_size", 15), "strategy.population_size"),
        (("genome.name", "vector"), "genome.name"),
        (("strategy.sigma_learning_rate", -0.1), "strategy.sigma_learning_rate"),
        (("strategy.learning_rate", 0), "strategy.learning_rate"),
        (("strategy.weight_decay", 0.01), "strategy.weight_decay"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_field(setting, field):
    with pytest.raises(UsageError) as error:
        build_config(overrides=[("strategy.name", "snes"), setting])
    message = str(error.value)
    assert f"config field {field}" in message and "\n" not in message


def test_the_command_line_refuses_a_bad_snes_setting_in_one_line(tmp_path):
    result = run_cli("run", "--strategy", "snes", "--set", "strategy.utilities=softmax", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "strategy.utilities" in result.stderr
    assert not (tmp_path / "r").exists()
