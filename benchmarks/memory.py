"""Peak resident memory of an ES generation (population 16 and 256) over inference-only memory.

Each measurement runs in a fresh subprocess and reads the kernel's peak RSS (``getrusage``'s
ru_maxrss, the figure /proc's VmHWM shows, through evolm's one reader) at the end,
so no measurement inherits another's allocations. Inference-only: build the same worker and run
forward passes of the fitness batch. Memory should not grow with population size: noise is
regenerated into preallocated buffers and only scalars come back.

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

SIZES = {"default": [], "4x": [("model.width", "128"), ("model.ff", "512")]}


def child(mode: str, population: int, genome: str, overrides: list[tuple[str, str]]) -> None:
    from evolm.config import build_config
    from evolm.engine import step_generation
    from evolm.evaluators import LocalEvaluator
    from evolm.fitness import mean_log_likelihood
    from evolm.strategies import make_strategy
    from evolm.worker import Worker

    config = build_config(overrides=[*overrides, ("strategy.population_size", population), ("genome.name", genome)])
    worker = Worker.from_config(config)
    if mode == "inference":
        for generation in range(3):
            mean_log_likelihood(worker.model, worker.fitness_context(generation).batch)
            worker.validation_loss()
    else:
        strategy = make_strategy(config, worker)
        evaluator = LocalEvaluator(worker)
        for generation in range(2):
            step_generation(strategy, evaluator, generation)
            worker.validation_loss()
    from evolm.baselines import peak_rss_mb

    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def measure(mode: str, population: int, genome: str, overrides) -> float:
    args = [sys.executable, __file__, "--child", mode, "--population", str(population), "--genome", genome]
    for key, value in overrides:
        args += ["--set", f"{key}={value}"]
    output = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["inference", "es"])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--genome", default="seed")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.population, args.genome, [tuple(item.split("=", 1)) for item in args.set])
        return
    results, rows = {}, []
    for size, overrides in SIZES.items():
        inference = measure("inference", 16, "seed", overrides)
        entry = {"inference_rss_mb": inference}
        for genome in ("seed", "lowrank"):
            for population in (16, 256):
                peak = measure("es", population, genome, overrides)
                entry[f"{genome}_pop{population}_rss_mb"] = peak
                entry[f"{genome}_pop{population}_ratio"] = peak / inference
                rows.append([size, genome, population, f"{inference:.0f}", f"{peak:.0f}", f"{peak / inference:.3f}"])
        results[size] = entry
    path = write_result("memory", {"sizes": results})
    print(f"wrote {path}")
    print_table(["model", "genome", "population", "inference MB", "ES peak MB", "ratio"], rows)


if __name__ == "__main__":
    main()
