"""How evaluation on Ray actors scales, and what it sends.

1. Whole generations, the way the engine runs them (``evolm.engine.step_generation``: ask, evaluate,
   tell, the update broadcast to every actor and applied there and on the driver, checksums
   compared), per second, for in-process (1 thread, 2 torch threads), 1 actor and 2 actors,
   interleaved; and the driver's share of a Ray generation: the time it is not blocked waiting for
   actors, over the generation's time.
2. Individuals per second of ``evaluate()`` alone with 1 and with 2 actors (one torch thread each) on the reference
   workload (default model, a 16x64 fitness batch, population 48), measured interleaved
   (1 actor, 2 actors, in-process 1 thread, in-process 2 threads, repeated) after a warm-up; the
   in-process rows are the honest reference for what one process does with the same cores.
3. Payload bytes per individual (serialised task arguments, results, update broadcasts and
   checksums: everything that crosses a process boundary) for the default model and models about
   10x and 100x larger (built, not trained), for the seed genome (OpenAI-ES) and the low-rank genome
   (GA), and bytes per gene of a vector genome (GA over biases and norms, one float32 array per
   chunk). Payloads do not depend on the fitness batch, so these runs use a 1x64 batch to stay quick.

The machine is shared: every figure is a median over interleaved rounds, with min and max.

Prints a table last and writes benchmarks/results/ray_scaling.json.

    python benchmarks/ray_scaling.py [--repetitions 7] [--generations 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine  # noqa: E402

from evolm.assembly import worker_from_config  # noqa: E402
from evolm.config import build_config  # noqa: E402
from evolm.engine import step_generation  # noqa: E402
from evolm.evaluators import LocalEvaluator  # noqa: E402
from evolm.models import count_parameters  # noqa: E402
from evolm.strategies import make_strategy  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ray_scaling.json"
# Model sizes: the default (width 64) and widths whose parameter counts are ~10x and ~100x of it.
SIZES = {"default": 64, "10x": 232, "100x": 752}


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": values}


def es_population(config, worker, generation):
    strategy = make_strategy(config, worker)
    return strategy.ask(generation)


def measure_speed(repetitions: int, generations: int) -> dict:
    """Individuals per second of evaluate(), interleaved across the four setups."""
    from evolm.evaluators.ray import RayEvaluator

    base = [("threads", "1")]
    setups = {}
    for actors in (1, 2):
        config = build_config(None, base + [("evaluator.workers", str(actors)), ("evaluator.threads_per_worker", "1")])
        worker = worker_from_config(config)
        setups[f"ray_{actors}_actor{'s' if actors > 1 else ''}"] = (config, worker, RayEvaluator(config, worker), None)
    for threads in (1, 2):
        config = build_config(None, [("threads", str(threads))])
        worker = worker_from_config(config)
        setups[f"in_process_{threads}_thread{'s' if threads > 1 else ''}"] = (
            config,
            worker,
            LocalEvaluator(worker),
            threads,
        )
    for _, _, evaluator, _ in setups.values():
        if hasattr(evaluator, "wait_for_actors"):
            evaluator.wait_for_actors()

    rates: dict[str, list[float]] = {name: [] for name in setups}
    generation = 0
    for repetition in range(repetitions + 1):  # the first round is the warm-up
        for name, (config, worker, evaluator, threads) in setups.items():
            torch.set_num_threads(threads or 1)
            count, seconds = 0, 0.0
            for _ in range(generations):
                population = es_population(config, worker, generation)
                started = time.perf_counter()
                evaluator.evaluate(population, generation)
                seconds += time.perf_counter() - started
                count += len(population)
                generation += 1
            if repetition:
                rates[name].append(count / seconds)
    for _, _, evaluator, _ in setups.values():
        evaluator.close()
    one, two = rates["ray_1_actor"], rates["ray_2_actors"]
    return {
        "individuals_per_second": {name: spread(values) for name, values in rates.items()},
        "speedup_2_workers": statistics.median(b / a for a, b in zip(one, two)),
        "ray_2_actors_over_in_process_2_threads": statistics.median(
            b / a for a, b in zip(rates["in_process_2_threads"], two)
        ),
        "population_size": setups["ray_1_actor"][0].strategy.population_size,
    }


def measure_generations(repetitions: int, generations: int) -> dict:
    """Whole ES generations per second (step_generation, as the engine runs it), interleaved, and the
    driver's share of a Ray generation (time not blocked on actors / generation time)."""
    from evolm.evaluators.ray import RayEvaluator

    setups = {}
    for threads in (1, 2):
        config = build_config(None, [("threads", str(threads))])
        worker = worker_from_config(config)
        setups[f"in_process_{threads}_thread{'s' if threads > 1 else ''}"] = (
            config,
            worker,
            LocalEvaluator(worker),
            threads,
        )
    for actors in (1, 2):
        config = build_config(
            None, [("threads", "1"), ("evaluator.workers", str(actors)), ("evaluator.threads_per_worker", "1")]
        )
        worker = worker_from_config(config)
        setups[f"ray_{actors}_actor{'s' if actors > 1 else ''}"] = (config, worker, RayEvaluator(config, worker), 1)
    strategies = {name: make_strategy(config, worker) for name, (config, worker, _, _) in setups.items()}
    for _, _, evaluator, _ in setups.values():
        if hasattr(evaluator, "wait_for_actors"):
            evaluator.wait_for_actors()
    rates: dict[str, list[float]] = {name: [] for name in setups}
    shares: dict[str, list[float]] = {name: [] for name in setups if name.startswith("ray")}
    counters = dict.fromkeys(setups, 0)  # each setup runs its own sequence of generations
    for repetition in range(repetitions + 1):  # the first round is the warm-up
        for name, (_config, _worker, evaluator, threads) in setups.items():
            torch.set_num_threads(threads)
            waited = getattr(evaluator, "wait_seconds", 0.0)
            started = time.perf_counter()
            for _ in range(generations):
                step_generation(strategies[name], evaluator, counters[name])
                counters[name] += 1
            seconds = time.perf_counter() - started
            if repetition:
                rates[name].append(generations / seconds)
                if name in shares:
                    shares[name].append(1.0 - (evaluator.wait_seconds - waited) / seconds)
    for _, _, evaluator, _ in setups.values():
        evaluator.close()
    one, two = rates["ray_1_actor"], rates["ray_2_actors"]
    return {
        "generations_per_second": {name: spread(values) for name, values in rates.items()},
        "driver_share": {name: spread(values) for name, values in shares.items()},
        "speedup_2_workers_generation": statistics.median(b / a for a, b in zip(one, two)),
        "ray_2_actors_over_in_process_2_threads_generation": statistics.median(
            b / a for a, b in zip(rates["in_process_2_threads"], two)
        ),
    }


def measure_vector_bytes() -> dict:
    """Bytes per gene sent for one generation of a vector genome (ga over biases and norms), 2 actors."""
    from evolm.evaluators.ray import RayEvaluator

    config = build_config(
        None,
        [
            ("data.batch_size", "1"),
            ("data.val_sequences", "1"),
            ("threads", "1"),
            ("evaluator.workers", "2"),
            ("strategy.name", "ga"),
            ("genome.name", "vector"),
            ("genome.params", "bias|norm"),
        ],
    )
    worker = worker_from_config(config)
    evaluator = RayEvaluator(config, worker)
    try:
        population = make_strategy(config, worker).ask(0)
        evaluator.evaluate(population, 0)
        sent = evaluator.stats()["bytes_sent"]
    finally:
        evaluator.close()
    genes = worker.space.numel
    return {
        "genes": genes,
        "individuals": len(population),
        "bytes_sent": sent,
        "bytes_per_gene": sent / (genes * len(population)),
        "bytes_per_gene_as_numpy_scalars_before": payload_of_scalars(population) / (genes * len(population)),
    }


def payload_of_scalars(population) -> int:
    """What the chunks cost when vector genes travelled as lists of NumPy scalars (before issue 13)."""
    from evolm.evaluators.ray import payload_bytes

    half = len(population) // 2
    return sum(payload_bytes(([list(ind) for ind in part], 0)) for part in (population[:half], population[half:]))


def measure_bytes(generations: int) -> dict:
    """Bytes per individual at each model size, for seed (es) and low-rank (ga) genomes, 2 actors."""
    from evolm.evaluators.ray import RayEvaluator

    results = {}
    for label, width in SIZES.items():
        row = {}
        for genome, strategy_name in (("seed", "es"), ("lowrank", "ga")):
            overrides = [
                ("model.width", str(width)),
                ("model.ff", str(4 * width)),
                ("data.batch_size", "1"),
                ("data.val_sequences", "1"),
                ("threads", "1"),
                ("evaluator.workers", "2"),
                ("strategy.name", strategy_name),
                ("genome.name", genome),
            ]
            config = build_config(None, overrides)
            worker = worker_from_config(config)
            row["parameters"] = count_parameters(worker.model)
            evaluator = RayEvaluator(config, worker)
            try:
                strategy = make_strategy(config, worker)
                per_generation = []
                for generation in range(generations):
                    population = strategy.ask(generation)
                    invalid = [individual for individual in population if not individual.fitness.valid]
                    for individual, fitness in zip(invalid, evaluator.evaluate(invalid, generation)):
                        individual.fitness.values = fitness
                    evaluator.apply_update(strategy.tell(population, generation)[1])
                    stats = evaluator.stats()
                    per_generation.append(stats["bytes_sent"] / max(1, len(invalid)))
                row[genome] = max(per_generation)
                row[f"{genome}_bytes_per_generation"] = stats["bytes_sent"]
            finally:
                evaluator.close()
        results[label] = row
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7, help="measured rounds after one warm-up round")
    parser.add_argument("--generations", type=int, default=3, help="generations per setup per round")
    parser.add_argument(
        "--byte-generations", type=int, default=2, help="generations per model size for the byte counts"
    )
    args = parser.parse_args()

    from evolm.evaluators.ray_cluster import start_local_runtime, stop_local_runtime

    # A local runtime as evolm starts its own (loopback, token authentication on). 3 logical CPUs:
    # the 1-actor and 2-actor evaluators live side by side (only one runs at a time).
    start_local_runtime(num_cpus=3)
    started = time.perf_counter()
    load_before = os.getloadavg()  # a shared machine: other people's processes compete for the cores
    try:
        generation = measure_generations(args.repetitions, args.generations)
        speed = measure_speed(args.repetitions, args.generations)
        payload = measure_bytes(args.byte_generations)
        vector = measure_vector_bytes()
    finally:
        stop_local_runtime()

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "workload": {
            "model": "gpt width 64, 2 layers, 4 heads, ff 256, context 64",
            "fitness_batch": "16x64",
            "population": speed["population_size"],
            "threads_per_actor": 1,
            "repetitions": args.repetitions,
            "generations_per_repetition": args.generations,
        },
        "speedup_2_workers": speed["speedup_2_workers"],
        "speedup_2_workers_generation": generation["speedup_2_workers_generation"],
        "ray_2_actors_over_in_process_2_threads_generation": generation[
            "ray_2_actors_over_in_process_2_threads_generation"
        ],
        "generations_per_second": generation["generations_per_second"],
        "driver_share_of_generation": generation["driver_share"],
        "ray_2_actors_over_in_process_2_threads": speed["ray_2_actors_over_in_process_2_threads"],
        "individuals_per_second": speed["individuals_per_second"],
        "bytes_per_individual": payload,
        "vector_genome_payload": vector,
        "notes": "speedup_2_workers and individuals_per_second time evaluate() alone; the *_generation figures "
        "and generations_per_second time whole generations (evolm.engine.step_generation). The machine "
        "is shared and noisy: setups run interleaved, figures are medians of paired rounds.",
        "targets": {"speedup_2_workers": 1.6, "bytes_per_individual": 1024},
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_1_5_15_min": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nRay scaling on {result['machine']['cpu']} ({result['machine']['cores']} cores), "
        f"torch {result['machine']['torch']}, ray {result['machine']['ray']}"
    )
    print(f"{'setup':<24}{'individuals/s min':>18}{'median':>10}{'max':>10}")
    for name, figures in speed["individuals_per_second"].items():
        print(f"{name:<24}{figures['min']:>18.1f}{figures['median']:>10.1f}{figures['max']:>10.1f}")
    print(
        f"load average before / after: {result['load_average_1_5_15_min']['before'][0]} / "
        f"{result['load_average_1_5_15_min']['after'][0]} (on {result['machine']['cores']} cores)"
    )
    print(
        f"vector genome: {vector['bytes_per_gene']:.2f} B/gene sent (as NumPy scalars before: "
        f"{vector['bytes_per_gene_as_numpy_scalars_before']:.2f})"
    )
    print(f"{'setup':<24}{'generations/s min':>18}{'median':>10}{'max':>10}{'driver share':>14}")
    for name, figures in generation["generations_per_second"].items():
        share = generation["driver_share"].get(name)
        share_text = f"{share['median']:.2f}" if share else "-"
        print(f"{name:<24}{figures['min']:>18.2f}{figures['median']:>10.2f}{figures['max']:>10.2f}{share_text:>14}")
    print(
        f"speedup 2 actors / 1 actor, evaluate() only (median of paired ratios): {speed['speedup_2_workers']:.2f} (target >= 1.6)"
    )
    print(
        f"speedup 2 actors / 1 actor, whole generations: {generation['speedup_2_workers_generation']:.2f}; "
        f"2 actors / in-process 2 threads: {generation['ray_2_actors_over_in_process_2_threads_generation']:.2f}"
    )
    print(f"2 actors / in-process 2 threads, evaluate() only: {speed['ray_2_actors_over_in_process_2_threads']:.2f}")
    print(f"{'model':<10}{'parameters':>14}{'seed B/ind':>12}{'lowrank B/ind':>15}")
    for label, row in payload.items():
        print(f"{label:<10}{row['parameters']:>14,}{row['seed']:>12.1f}{row['lowrank']:>15.1f}")
    print(f"(target <= 1024 B per individual) -> {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
