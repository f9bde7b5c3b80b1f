"""Every registered strategy, driven by one table: it reaches a known optimum and it lowers a tiny LM's validation loss."""

import json

import pytest
import torch

from evolm.config import build_config
from evolm.engine import run
from evolm.strategies import STRATEGIES
from functions import minimise, rastrigin, sphere

# strategy -> (genome for standard functions, settings). Thresholds: sphere (20-d, starts at 29.5)
# must fall below 0.05; Rastrigin (20-d, starts at 219.5, global optimum 0, many local minima)
# below 25% of its start. Measured on 2026-11-29 (200 generations): sphere es 0.013, ga 1e-6,
# nsga2 2e-7, cmaes 8e-11; Rastrigin es 32, ga 40, nsga2 30, cmaes 19.
FUNCTION_CASES = {
    "es": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.1), ("strategy.learning_rate", 0.1)]),
    "ga": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.3)]),
    "nsga2": ("seed", [("strategy.population_size", 40), ("strategy.sigma", 0.3)]),
    "cmaes": ("vector", [("strategy.population_size", 20), ("strategy.sigma", 1.0)]),
}
TARGET = torch.linspace(-2.0, 2.0, 20)


# pbt trains with gradients: it has no genome to search a standard function with (see tests/test_pbt.py).
SEARCH_STRATEGIES = sorted(set(STRATEGIES) - {"pbt"})


def test_every_registered_strategy_has_a_case():
    assert set(FUNCTION_CASES) == set(SEARCH_STRATEGIES)


@pytest.mark.parametrize("name", SEARCH_STRATEGIES)
@pytest.mark.parametrize("function, threshold", [(sphere, 0.05), (rastrigin, 0.25 * float(rastrigin(TARGET)))],
                         ids=["sphere", "rastrigin"])
def test_strategy_reaches_the_optimum_region(name, function, threshold):
    genome, settings = FUNCTION_CASES[name]
    config = build_config(overrides=[("strategy.name", name), ("genome.name", genome), ("generations", 200), *settings])
    assert minimise(config, function, TARGET) < threshold


TINY_LM = [("model.width", 32), ("model.layers", 1), ("model.heads", 2), ("model.ff", 64), ("model.context", 32),
           ("data.batch_size", 8), ("data.val_sequences", 16), ("threads", 1), ("generations", 12)]
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
    config = build_config(overrides=[*TINY_LM, ("strategy.name", name), ("genome.name", genome),
                                     ("genome.params", params), *settings])
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
    overrides = [*TINY_LM, ("generations", 4), ("strategy.name", name), ("genome.name", genome),
                 ("genome.params", "head.bias"), ("strategy.population_size", 8)]
    rows = []
    for attempt in range(2):
        run(build_config(overrides=overrides), tmp_path / str(attempt), progress=False, log=lambda *a: None)
        lines = (tmp_path / str(attempt) / "metrics.jsonl").read_text().splitlines()
        rows.append([{k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in lines])
    assert rows[0] == rows[1]
