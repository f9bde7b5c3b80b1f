"""Tokens per second of population evaluation against plain batched inference of the same model and tokens.

Every method scores one ES population (16 individuals: 8 antithetic pairs, fresh seeds at every
repeat, so no noise is reused across calls) on the reference 16 x 64 fitness batch, through the
worker's own code path (``Worker.evaluate``, or the threads evaluator with two replicas):

(a) plain: the fastest forward + log-likelihood of the unperturbed model over batch shapes 16, 32 and 64 x 64
    (the honest denominator of benchmarks/README.md; 8 and 128 rows were slower in every earlier run);
(b) lowrank, batched: EGGROLL's pass, ``chunk`` individuals at once, for each chunk in --chunks;
(c) lowrank, in place: one individual at a time, rank-1 noise added to the weights, scored, restored;
(d) seed, in place: the same with full-rank noise regenerated into preallocated buffers (an antithetic
    partner reuses its pair's noise).
Each is timed under three parallel settings, and plain inference gets every one of them too: one
thread; all cores inside each operator (torch intra-op threads); one Python thread per core, each
with its own model copy and one intra-op thread (the ``threads`` evaluator backend; for plain
inference, two model copies running the batch shape at once). Every method's rate is its best
setting's median; ``lowrank_tokens_per_s`` is the faster of (b) and (c). Also: cached generation
time at 256 and 512 new tokens (linear growth means a ratio near 2), and under ``generation`` the
population *writing* its continuations against plain batched generation at the same total batch
(benchmarks/generation_throughput.py: ``generation.lowrank_ratio`` and the others).

    python benchmarks/throughput.py [--repeats 9] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import antithetic_genes, interleaved, print_table, summary, write_result  # noqa: E402
from generation_throughput import measure_generation  # noqa: E402

from evolm.config import build_config  # noqa: E402
from evolm.data import Batch  # noqa: E402
from evolm.engine import make_worker  # noqa: E402
from evolm.evaluators.threads import ThreadEvaluator  # noqa: E402
from evolm.fitness import mean_log_likelihood  # noqa: E402
from evolm.individuals import make_individual  # noqa: E402
from evolm.models import count_parameters  # noqa: E402

SIZES = {"default": [], "4x": [("model.width", 128), ("model.ff", 512)]}
PLAIN_BATCHES = (16, 32, 64)  # 8 and 128 rows were never the fastest here


def measure(overrides, repeats: int, population: int, chunks, settings) -> dict:
    def evaluator(*extra):
        config = build_config(
            overrides=[*overrides, *extra, ("evaluator.workers", 2), ("evaluator.backend", "threads")]
        )
        return ThreadEvaluator(config, make_worker(config))

    # One evaluator per genome, each with two replicas (more models in one process would crowd the
    # caches). One thread calls replica 0 directly; two threads go through the evaluator. The lowrank
    # chunk is switched between calls, 0 meaning one individual at a time in place.
    seed = evaluator()
    lowrank = evaluator(("genome.name", "lowrank"), ("genome.batch_individuals", 1))
    assert lowrank.worker.population_chunk == 0
    methods = {"seed": (seed, 0), "lowrank 1": (lowrank, 0), **{f"lowrank {c}": (lowrank, c) for c in chunks}}
    models = [replica.model for replica in seed.replicas]
    batch = seed.worker.fitness_context(0).batch  # the 16 x 64 fitness batch every individual scores
    for replica in [*seed.replicas, *lowrank.replicas]:
        replica.fitness_context(0).batch.inputs.copy_(batch.inputs)  # same tokens for every method
        replica.fitness_context(0).batch.targets.copy_(batch.targets)
    tokens_per_individual = batch.num_tokens
    counter = itertools.count(1)
    pool = ThreadPoolExecutor(2)

    def evaluate(name, python_threads):
        chosen, chunk = methods[name]

        def call():
            for replica in chosen.replicas:
                replica.population_chunk = chunk
            chosen._batch_multiple = max(1, chunk)
            population_genes = antithetic_genes(counter, population)
            if python_threads == 1:
                return chosen.worker.evaluate(population_genes, 0)
            return chosen.evaluate([make_individual(genes) for genes in population_genes], 0)

        return call

    def plain(rows, python_threads):
        """A call that puts as many tokens through plain forwards as one population evaluation does."""
        repeat = -(-rows // batch.inputs.shape[0])
        sized = Batch(batch.inputs.repeat(repeat, 1)[:rows], batch.targets.repeat(repeat, 1)[:rows])
        calls = max(python_threads, population * tokens_per_individual // sized.num_tokens) // python_threads
        tokens = calls * python_threads * sized.num_tokens
        if python_threads == 1:
            return (lambda: [mean_log_likelihood(models[0], sized) for _ in range(calls)]), tokens
        # Plain inference gets the same parallelism: each thread its own model copy and batches.
        return (
            lambda: [
                f.result()
                for f in [
                    pool.submit(lambda m=m: [mean_log_likelihood(m, sized) for _ in range(calls)]) for m in models
                ]
            ]
        ), tokens

    per_setting = {}
    for setting, (intra_op, python_threads) in settings.items():
        torch.set_num_threads(intra_op)
        # The denominator: the fastest plain forward + log-likelihood over batch shapes, timed in the
        # same interleaved rounds as the methods (a shape picked in a separate run can be unlucky).
        plains = {rows: plain(rows, python_threads) for rows in PLAIN_BATCHES}
        functions = {
            **{f"plain {rows}": call for rows, (call, _) in plains.items()},
            **{name: evaluate(name, python_threads) for name in methods},
        }
        times = interleaved(functions, repeats=repeats)
        rates = {rows: [tokens / t for t in times[f"plain {rows}"]] for rows, (_, tokens) in plains.items()}
        best_rows = max(rates, key=lambda rows: statistics.median(rates[rows]))
        per_setting[setting] = {
            "plain_rows": best_rows,
            "plain": rates[best_rows],
            "plain_by_rows": {rows: statistics.median(r) for rows, r in rates.items()},
        }
        for name in methods:
            per_setting[setting][name] = [population * tokens_per_individual / t for t in times[name]]
    pool.shutdown()
    for chosen in (seed, lowrank):
        chosen.close()
    methods = ["plain", *methods]
    # Each method at its best setting; the denominator is the best plain rate seen anywhere.
    best = {m: statistics.median(max((r[m] for r in per_setting.values()), key=statistics.median)) for m in methods}
    best_setting = {m: max(per_setting, key=lambda k: statistics.median(per_setting[k][m])) for m in methods}
    batched_chunk = max(chunks, key=lambda c: best[f"lowrank {c}"])
    plain_rate = best["plain"]
    model = models[0]

    torch.set_num_threads(max(intra_op for intra_op, _ in settings.values()))
    prompt = batch.inputs[:4, :16]
    gen_times = interleaved(
        {
            "256": lambda: model.generate(prompt, 256, 1.0, torch.Generator().manual_seed(0)),
            "512": lambda: model.generate(prompt, 512, 1.0, torch.Generator().manual_seed(0)),
        },
        repeats=max(3, repeats // 2),
    )
    lowrank_rate = max(best["lowrank 1"], best[f"lowrank {batched_chunk}"])
    return {
        "parameters": count_parameters(model),
        "fitness_batch": list(batch.inputs.shape),
        "population": population,
        "settings": {
            k: {
                "torch_threads": settings[k][0],
                "python_threads": settings[k][1],
                "plain_rows": r["plain_rows"],
                "plain_by_rows": r["plain_by_rows"],
                **{m: summary(r[m]) for m in methods},
            }
            for k, r in per_setting.items()
        },
        "best_setting": best_setting,
        "plain_tokens_per_s": plain_rate,
        "lowrank_tokens_per_s": lowrank_rate,
        "lowrank_in_place_tokens_per_s": best["lowrank 1"],
        "lowrank_batched_tokens_per_s": best[f"lowrank {batched_chunk}"],
        "lowrank_batched_chunk": batched_chunk,
        "seed_tokens_per_s": best["seed"],
        "lowrank_ratio": lowrank_rate / plain_rate,
        "lowrank_in_place_ratio": best["lowrank 1"] / plain_rate,
        "lowrank_batched_ratio": best[f"lowrank {batched_chunk}"] / plain_rate,
        "seed_ratio": best["seed"] / plain_rate,
        "generate_256_s": statistics.median(gen_times["256"]),
        "generate_512_s": statistics.median(gen_times["512"]),
        "generate_512_over_256": statistics.median(gen_times["512"]) / statistics.median(gen_times["256"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--population", type=int, default=16, help="individuals per timed call (antithetic pairs)")
    parser.add_argument("--chunks", default="2,4", help="batched-pass chunk sizes to try")
    parser.add_argument("--write-chunks", default="4,8,16", help="individuals per batched writing pass to try")
    parser.add_argument("--quick", action="store_true", help="default size only, 3 repeats")
    args = parser.parse_args()
    cores = torch.get_num_threads()
    # (torch intra-op threads, Python threads): one thread; all cores inside each op; one thread per
    # core, each with its own model (the threads evaluator backend, and plain inference likewise).
    settings = {"1 thread": (1, 1), f"{cores} torch threads": (cores, 1), f"{cores} python threads": (1, cores)}
    if cores == 1:
        settings = {"1 thread": (1, 1)}
    chunks = [int(c) for c in args.chunks.split(",")]
    sizes = {"default": SIZES["default"]} if args.quick else SIZES
    repeats = 3 if args.quick else args.repeats
    results = {
        size: measure(overrides, repeats, args.population, chunks, settings) for size, overrides in sizes.items()
    }
    write_chunks = [int(c) for c in args.write_chunks.split(",")]
    for size, overrides in sizes.items():
        results[size]["generation"] = measure_generation(overrides, repeats, args.population, write_chunks, settings)
    path = write_result("throughput", {"sizes": results, "repeats": repeats})
    for size, r in results.items():
        print(f"{size}: best settings " + ", ".join(f"{m} = {k}" for m, k in r["best_setting"].items()))
    rows = [
        [
            size,
            f"{r['parameters']:,}",
            f"{r['plain_tokens_per_s']:,.0f}",
            f"{r['lowrank_in_place_ratio']:.2f}",
            f"{r['lowrank_batched_ratio']:.2f} (x{r['lowrank_batched_chunk']})",
            f"{r['lowrank_ratio']:.2f}",
            f"{r['seed_ratio']:.2f}",
            f"{r['generate_512_over_256']:.2f}",
        ]
        for size, r in results.items()
    ]
    print(f"wrote {path}")
    print_table(
        [
            "model",
            "params",
            "plain tok/s",
            "lowrank in place",
            "lowrank batched",
            "lowrank ratio",
            "seed ratio",
            "gen 512/256",
        ],
        rows,
    )
    print_table(
        ["model", "plain gen tok/s", "lowrank write", "lowrank evaluate", "lowrank in place", "seed evaluate"],
        [
            [
                size,
                f"{g['plain_tokens_per_s']:,.0f}",
                f"{g['lowrank_ratio']:.2f} (x{g['lowrank_write_chunk']})",
                f"{g['lowrank_evaluate_ratio']:.2f}",
                f"{g['lowrank_in_place_ratio']:.2f}",
                f"{g['seed_ratio']:.2f}",
            ]
            for size, g in ((size, r["generation"]) for size, r in results.items())
        ],
    )


if __name__ == "__main__":
    main()
