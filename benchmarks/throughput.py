"""Tokens per second of population evaluation against plain batched inference of the same model and tokens.

(a) plain: the fastest forward + log-likelihood of the unperturbed model over several batch shapes
    (the honest denominator of BENCHMARKS.md);
(b) lowrank: EGGROLL's batched pass, a chunk of low-rank individuals on the fitness batch at once;
(c) seed: one individual at a time, noise regenerated in place, scored, restored.
Also: cached generation time at 256 and 512 new tokens (linear growth means a ratio near 2).

    python benchmarks/throughput.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, print_table, summary, write_result  # noqa: E402

from evolm.config import build_config  # noqa: E402
from evolm.data import Corpus  # noqa: E402
from evolm.fitness import mean_log_likelihood  # noqa: E402
from evolm.genome import LowRankGenome, ParamSpace, SeedGenome  # noqa: E402
from evolm.models import count_parameters  # noqa: E402
from evolm.population import population_log_likelihood  # noqa: E402
from evolm.worker import build_model  # noqa: E402

SIZES = {"default": [], "4x": [("model.width", 128), ("model.ff", 512)]}
FITNESS_BATCH = 16  # the reference workload's 16 x 64 fitness batch
PLAIN_BATCHES = (8, 16, 32, 64, 128)


def measure(size: str, overrides, repeats: int, population: int, chunk: int, thread_options) -> dict:
    config = build_config(overrides=overrides)
    model = build_model(config.model, 0).eval()
    corpus = Corpus.load(None, config.model.context)
    generator = torch.Generator().manual_seed(0)
    batch = corpus.sample_batch(FITNESS_BATCH, generator)
    tokens_per_individual = batch.num_tokens
    lowrank = LowRankGenome(ParamSpace(model), rank=1)
    lowrank_genes = [[(s, 0.02 if s % 2 else -0.02)] for s in range(1, population + 1)]
    seed_genome = SeedGenome(ParamSpace(model))
    seed_genes = [(7, 0.02)]

    def seed_one():
        seed_genome.apply(model, seed_genes)
        mean_log_likelihood(model, batch)
        seed_genome.undo(model, seed_genes)

    def lowrank_all():
        for i in range(0, population, chunk):
            population_log_likelihood(model, batch, lowrank, lowrank_genes[i : i + chunk])

    per_threads = {}
    for threads in thread_options:
        torch.set_num_threads(threads)
        # The denominator: the fastest plain forward + log-likelihood over batch shapes at this thread count.
        best_rows, best_rate = None, 0.0
        for rows in PLAIN_BATCHES:
            big = corpus.sample_batch(rows, generator)
            times = interleaved({"plain": lambda: mean_log_likelihood(model, big)}, repeats=repeats)["plain"]
            if big.num_tokens / statistics.median(times) > best_rate:
                best_rows, best_rate = rows, big.num_tokens / statistics.median(times)
        plain_batch = corpus.sample_batch(best_rows, generator)
        times = interleaved({"plain": lambda: mean_log_likelihood(model, plain_batch), "lowrank": lowrank_all,
                             "seed": seed_one}, repeats=repeats)
        per_threads[threads] = {
            "plain_rows": best_rows,
            "plain": [plain_batch.num_tokens / t for t in times["plain"]],
            "lowrank": [population * tokens_per_individual / t for t in times["lowrank"]],
            "seed": [tokens_per_individual / t for t in times["seed"]],
        }
    # Each method at its best thread count; the denominator is the best plain rate seen anywhere.
    best = {m: max(per_threads.values(), key=lambda r: statistics.median(r[m])) for m in ("plain", "lowrank", "seed")}
    plain = statistics.median(best["plain"]["plain"])
    lowrank_rate = statistics.median(best["lowrank"]["lowrank"])
    seed_rate = statistics.median(best["seed"]["seed"])

    torch.set_num_threads(max(per_threads, key=lambda t: statistics.median(per_threads[t]["plain"])))
    prompt = batch.inputs[:4, :16]
    gen_times = interleaved({
        "256": lambda: model.generate(prompt, 256, 1.0, torch.Generator().manual_seed(0)),
        "512": lambda: model.generate(prompt, 512, 1.0, torch.Generator().manual_seed(0)),
    }, repeats=max(3, repeats // 2))
    return {
        "parameters": count_parameters(model),
        "fitness_batch": [FITNESS_BATCH, config.model.context],
        "population": population,
        "population_chunk": chunk,
        "by_threads": {str(t): {"plain_rows": r["plain_rows"], **{m: summary(r[m]) for m in ("plain", "lowrank", "seed")}}
                       for t, r in per_threads.items()},
        "plain_tokens_per_s": plain,
        "lowrank_tokens_per_s": lowrank_rate,
        "seed_tokens_per_s": seed_rate,
        "lowrank_ratio": lowrank_rate / plain,
        "seed_ratio": seed_rate / plain,
        "generate_256_s": statistics.median(gen_times["256"]),
        "generate_512_s": statistics.median(gen_times["512"]),
        "generate_512_over_256": statistics.median(gen_times["512"]) / statistics.median(gen_times["256"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--population", type=int, default=16, help="lowrank individuals per timed call")
    parser.add_argument("--chunk", type=int, default=4, help="individuals per batched pass (the genome.batch_individuals default)")
    parser.add_argument("--quick", action="store_true", help="default size only, 3 repeats")
    args = parser.parse_args()
    threads = sorted({1, torch.get_num_threads()})
    sizes = {"default": SIZES["default"]} if args.quick else SIZES
    repeats = 3 if args.quick else args.repeats
    results = {size: measure(size, overrides, repeats, args.population, args.chunk, threads) for size, overrides in sizes.items()}
    path = write_result("throughput", {"sizes": results, "repeats": repeats})
    rows = [[size, f"{r['parameters']:,}", f"{r['plain_tokens_per_s']:,.0f}", f"{r['lowrank_tokens_per_s']:,.0f}",
             f"{r['seed_tokens_per_s']:,.0f}", f"{r['lowrank_ratio']:.2f}", f"{r['seed_ratio']:.2f}",
             f"{r['generate_512_over_256']:.2f}"] for size, r in results.items()]
    print(f"wrote {path}")
    print_table(["model", "params", "plain tok/s", "lowrank tok/s", "seed tok/s", "lowrank ratio", "seed ratio", "gen 512/256"], rows)


if __name__ == "__main__":
    main()
