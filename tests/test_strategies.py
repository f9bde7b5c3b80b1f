"""Every registered strategy, driven by one table: it reaches a known optimum and it lowers a tiny LM's validation loss."""

import json

import pytest
import torch
from conftest import TINY_SIZES
from functions import minimise, rastrigin, sphere

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.engine import WALL_CLOCK_FIELDS, run
from evolm.strategies import STRATEGIES

# strategy -> (genome for standard functions, settings). Thresholds: sphere (20-d, starts at 29.5)
# must fall below 0.05; Rastrigin (20-d, starts at 219.5, global optimum 0, many local minima)
# below 25% of its start. Measured on 2026-11-29 (200 generations): sphere es 0.013, ga 1e-6,
# nsga2 2e-7, cmaes 8e-11; Rastrigin es 32, ga 40, nsga2 30, cmaes 19. snes (2026-12-05): sphere 1e-9, Rastrigin 28.
FUNCTION_CASES = {
    "es": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.1), ("strategy.learning_rate", 0.1)]),
    "ga": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.3)]),
    "nsga2": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.3)]),
    "cmaes": ("vector", [("strategy.population_size", 20), ("strategy.sigma", 1.0)]),
    "snes": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.3), ("strategy.learning_rate", 1.0)]),
}
TARGET = torch.linspace(-2.0, 2.0, 20)


# pbt trains with gradients: it has no genome to search a standard function with (see tests/test_pbt.py).
SEARCH_STRATEGIES = sorted(set(STRATEGIES) - {"pbt"})


def test_every_registered_strategy_has_a_case():
    assert set(FUNCTION_CASES) == set(SEARCH_STRATEGIES)


@pytest.mark.parametrize("name", SEARCH_STRATEGIES)
@pytest.mark.parametrize(
    "function, threshold", [(sphere, 0.05), (rastrigin, 0.25 * float(rastrigin(TARGET)))], ids=["sphere", "rastrigin"]
)
def test_strategy_reaches_the_optimum_region(name, function, threshold):
    genome, settings = FUNCTION_CASES[name]
    config = build_config(overrides=[("strategy.name", name), ("genome.name", genome), ("generations", 200), *settings])
    assert minimise(config, function, TARGET) < threshold


TINY_LM = [
    *TINY_SIZES,
    ("generations", 12),
]
LM_CASES = [
    ("es", "seed", ".*", [("strategy.population_size", 16)]),
    ("es", "lowrank", ".*", [("strategy.population_size", 16), ("genome.rank", 2)]),
    ("ga", "seed", ".*", [("strategy.population_size", 16), ("strategy.sigma", 0.05)]),
    ("ga", "vector", "bias|norm", [("strategy.population_size", 16), ("strategy.sigma", 0.1)]),
    ("nsga2", "seed", ".*", [("strategy.population_size", 16), ("strategy.sigma", 0.05)]),
    ("cmaes", "vector", "head.bias", [("strategy.population_size", 12), ("strategy.sigma", 0.3)]),
    ("pbt", "seed", ".*", [("strategy.population_size", 4), ("strategy.pbt_steps", 5), ("generations", 3)]),
]


@pytest.mark.parametrize("name, genome, params, settings", LM_CASES, ids=[f"{c[0]}-{c[1]}" for c in LM_CASES])
def test_strategy_lowers_validation_loss_of_a_tiny_language_model(tmp_path, name, genome, params, settings):
    config = build_config(
        overrides=[*TINY_LM, ("strategy.name", name), ("genome.name", genome), ("genome.params", params), *settings]
    )
    summary = run(config, tmp_path / "run", progress=False, log=lambda *a: None)
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.05, summary
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["strategy"] == name and saved["genome"] == genome
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("fitness_max" in row for row in rows)
    if name in ("ga", "nsga2"):
        assert all("mutation_scale" in row for row in rows)
    if name == "nsga2":
        assert all(row["pareto_front"] for row in rows)


@pytest.mark.parametrize("name, genome", [("ga", "seed"), ("cmaes", "vector")])
def test_same_seed_same_results(tmp_path, name, genome):
    overrides = [
        *TINY_LM,
        ("generations", 4),
        ("strategy.name", name),
        ("genome.name", genome),
        ("genome.params", "head.bias"),
        ("strategy.population_size", 8),
    ]
    rows = []
    for attempt in range(2):
        run(build_config(overrides=overrides), tmp_path / str(attempt), progress=False, log=lambda *a: None)
        lines = (tmp_path / str(attempt) / "metrics.jsonl").read_text().splitlines()
        rows.append([{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_FIELDS} for line in lines])
    assert rows[0] == rows[1]


# --- what choosing a strategy chooses (evolm.config.STRATEGY_DEFAULTS) -------------------------------------------


@pytest.mark.parametrize(
    "name, population, genome, params",
    [
        ("es", 48, "seed", ".*"),
        ("ga", 48, "seed", ".*"),
        ("nsga2", 48, "seed", ".*"),
        ("cmaes", 24, "vector", "norm|head.bias"),
        ("pbt", 8, "seed", ".*"),
    ],
)
def test_choosing_a_strategy_chooses_its_defaults(name, population, genome, params):
    config = build_config(overrides=[("strategy.name", name)])
    assert (config.strategy.population_size, config.genome.name, config.genome.params) == (population, genome, params)


def test_explicit_settings_win_over_strategy_defaults(tmp_path):
    from evolm.api import make_config
    from evolm.config import validate

    # --set / flags, in either order relative to the strategy
    for overrides in (
        [("strategy.population_size", 48), ("strategy.name", "pbt")],
        [("strategy.name", "pbt"), ("strategy.population_size", "48")],
    ):
        assert build_config(overrides=overrides).strategy.population_size == 48
    # a --config file
    toml = tmp_path / "settings.toml"
    toml.write_text('[strategy]\nname = "cmaes"\npopulation_size = 10\nsigma = 0.05\n[genome]\nparams = "head.bias"\n')
    config = build_config(toml)
    assert (config.strategy.population_size, config.strategy.sigma, config.genome.name, config.genome.params) == (
        10,
        0.05,
        "vector",
        "head.bias",
    )
    # the Python API's settings
    config = make_config(settings={"strategy": "pbt", "population_size": 6})
    validate(config)
    assert config.strategy.population_size == 6
    config = make_config(settings={"strategy": "pbt"})
    validate(config)
    assert config.strategy.population_size == 8


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_resolved_config_reloads_to_the_same_config(tmp_path, name):
    """What a run writes to config.toml (the resolved values) gives the same config back, whatever the strategy."""
    import tomli_w

    from evolm.config import RunConfig, config_from_dict

    config = build_config(overrides=[("strategy.name", name)])
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(config.to_dict()))
    assert build_config(path) == config
    assert config_from_dict(config.to_dict()) == config
    assert config != RunConfig()  # the unset fields were filled in


# --- cmaes: diverged individuals rank last ------------------------------------------------------------------------


def mostly_diverging(function, share: float = 0.7):
    """``function``, but NaN or inf for about ``share`` of the points (by a hash of the point, so it repeats)."""
    import hashlib

    def diverging(z):
        digest = hashlib.sha256(z.numpy().tobytes()).digest()[0]
        if digest < share * 256:
            return float("nan") if digest % 2 else float("inf")
        return function(z)

    return diverging


def test_cmaes_keeps_learning_when_most_individuals_diverge():
    """About 70% of every generation diverges (fewer finite individuals than CMA's mu = lambda/2, where DEAP's
    update used to fail): the update sees all lambda, diverged ones ranked last, and the search still converges."""
    from functions import function_worker

    from evolm.engine import step_generation
    from evolm.evaluators import LocalEvaluator
    from evolm.strategies import make_strategy

    config = build_config(
        overrides=[
            ("strategy.name", "cmaes"),
            ("genome.name", "vector"),
            ("strategy.population_size", 20),
            ("strategy.sigma", 1.0),
        ]
    )
    worker = function_worker(config, mostly_diverging(sphere), TARGET)
    strategy = make_strategy(config, worker)
    evaluator = LocalEvaluator(worker)
    diverged = []
    for generation in range(160):
        metrics, _ = step_generation(strategy, evaluator, generation)
        diverged.append(metrics["diverged"])
    assert sum(diverged) / len(diverged) > 12  # most generations left fewer than mu = 10 finite individuals
    with worker.applied(strategy.best_genes()) as model:
        # 29.5 at the start; 0.49 measured (slower than without divergence: with fewer finite individuals
        # than mu, diverged ones take some recombination weight)
        assert float(sphere(model.x.detach() - TARGET)) < 0.05 * float(sphere(TARGET))


def test_cmaes_halves_its_step_when_a_whole_generation_diverges():
    from functions import function_worker

    config = build_config(
        overrides=[
            ("strategy.name", "cmaes"),
            ("genome.name", "vector"),
            ("strategy.population_size", 8),
            ("strategy.sigma", 1.0),
        ]
    )
    strategy = STRATEGIES["cmaes"](config)
    strategy.bind(function_worker(config, sphere, TARGET))
    centroid = strategy.best_genes().copy()
    population = strategy.ask(0)
    for individual in population:
        individual.fitness.values = (float("-inf"),)
    metrics, _ = strategy.tell(population, 0)
    assert metrics["diverged"] == 8 and metrics["sigma"] == 0.5
    assert (strategy.best_genes() == centroid).all()  # no ranking, no move
    assert len(strategy.ask(1)) == 8


# --- nsga2: mating by crowded tournament ---------------------------------------------------------------------------


def test_nsga2_picks_parents_by_dominance_and_crowding_not_lexicographic_order():
    """Eight mutually non-dominated individuals on the line f1 + f2 = 7, symmetric in the two objectives.

    NSGA-II's crowded tournament (dominance, then crowding distance) treats both objectives alike and picks
    each individual at most twice; a plain tournament compares fitness lexicographically, so it keeps choosing
    high f1 (the best on f1 wins every tournament it enters).
    """
    from evolm.individuals import make_vector_individual

    config = build_config(
        overrides=[
            ("strategy.name", "nsga2"),
            ("genome.name", "vector"),
            ("fitness.terms", "likelihood=1,diversity=1"),
            ("strategy.population_size", 8),
            ("strategy.cxpb", 0),
            ("strategy.mutpb", 0),
            ("strategy.elites", 0),
        ]
    )
    strategy = STRATEGIES["nsga2"](config)
    f1_minus_f2, most_picks = [], 0
    for generation in range(25):
        population = []
        for i in range(8):
            individual = make_vector_individual([float(i)], 2)
            individual.fitness.values = (float(i), float(7 - i))
            population.append(individual)
        strategy.offspring = []
        strategy.tell(population, generation)
        parents = [tuple(child.fitness.values) for child in strategy.offspring]  # unvaried clones of the parents
        assert len(parents) == 8
        f1_minus_f2 += [f1 - f2 for f1, f2 in parents]
        most_picks = max(most_picks, max(parents.count(p) for p in parents))
    assert most_picks <= 2
    assert abs(sum(f1_minus_f2) / len(f1_minus_f2)) < 1.5  # a lexicographic tournament gives about +3


def test_nsga2_parents_never_lose_to_a_dominated_partner():
    """Each crowded tournament is a pair; whenever a pair holds a dominating and a dominated individual, the
    dominating one goes through. With a clear front and a clearly dominated half, the front supplies most parents."""
    from evolm.individuals import make_vector_individual

    config = build_config(
        overrides=[
            ("strategy.name", "nsga2"),
            ("genome.name", "vector"),
            ("fitness.terms", "likelihood=1,diversity=1"),
            ("strategy.population_size", 8),
            ("strategy.cxpb", 0),
            ("strategy.mutpb", 0),
        ]
    )
    strategy = STRATEGIES["nsga2"](config)
    front = [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0), (3.0, 0.0)]
    dominated = [(f1 - 10.0, f2 - 10.0) for f1, f2 in front]  # each dominated by every front member
    from_front = 0
    for generation in range(25):
        population = []
        for values in front + dominated:
            individual = make_vector_individual([values[0]], 2)
            individual.fitness.values = values
            population.append(individual)
        strategy.offspring = []
        strategy.tell(population, generation)
        from_front += sum(tuple(child.fitness.values) in front for child in strategy.offspring)
    # A dominated parent only wins a pair of two dominated ones: 1/4 of the time per tournament on average.
    assert from_front / (25 * 8) > 0.65


def test_pbt_default_population_and_its_memory_cost():
    """pbt's default is 8 members, each holding its own copy of the evolving weights and Adam's two moments:
    members x 3 x the weight bytes (what --help and the README state)."""
    from evolm.strategies import make_strategy

    config = build_config(overrides=[*TINY_LM, ("strategy.name", "pbt"), ("strategy.pbt_steps", 1)])
    worker = worker_from_config(config)
    strategy = make_strategy(config, worker)
    strategy.ask(0)  # one ready interval: every member now has Adam state

    def tensor_bytes(tree):
        if isinstance(tree, torch.Tensor):
            return tree.numel() * tree.element_size()
        if isinstance(tree, dict):
            return sum(tensor_bytes(v) for v in tree.values())
        if isinstance(tree, (list, tuple)):
            return sum(tensor_bytes(v) for v in tree)
        return 0

    weights = sum(t.numel() * t.element_size() for t in worker.space.tensors)
    assert len(strategy.members) == 8
    held = sum(tensor_bytes(member["tensors"]) + tensor_bytes(member["optimizer"]) for member in strategy.members)
    assert 3 * 8 * weights <= held <= 3.01 * 8 * weights  # Adam's step counters are the only extra
