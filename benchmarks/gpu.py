"""Population evaluation against plain batched inference on a CUDA device, for a GPT of 100 M parameters or more.

The model comes from evolm's own config (width 768, 16 layers, 12 heads, feed-forward 3072, context
256: 114.0 M parameters on byte tokens), built by ``evolm.engine.make_worker`` on the GPU. Each timed
call ends with ``torch.cuda.synchronize()``, so its time covers the device's work, and the calls are
interleaved (A B C A B C ..., benchmarks/common.py) after a warm-up round. Two ratios, measured as
benchmarks/throughput.py measures them on the CPU:

(a) scoring: tokens/s of one ES population's evaluation (``--population`` individuals in antithetic
    pairs, fresh seeds at every call, each scoring the 16 x 256 fitness batch through ``Worker.evaluate``)
    for the seed genome (in place) and the lowrank genome (EGGROLL's batched pass, each chunk in
    ``--chunks``, and in place), over the fastest plain forward + log-likelihood of the unperturbed
    model among the batch shapes ``--plain-rows`` x 256;
(b) generation: generated tokens/s of the same population's evaluation with a fitness that only writes
    (``fitness.terms = "diversity"``: ``--prompts`` prompts of 16 tokens per individual, ``--new-tokens``
    sampled at temperature 1), over the fastest plain batched ``generate`` of the model among row counts
    that include the population's total (population x prompts).

    python benchmarks/gpu.py [--repeats 5] [--population 16] [--chunks 4,8,16]

On a machine without CUDA it prints one line and exits 0: it measures nothing on a CPU.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import antithetic_genes, interleaved, print_table, summary, write_result  # noqa: E402

from evolm.config import build_config  # noqa: E402
from evolm.data import Batch  # noqa: E402
from evolm.engine import make_worker  # noqa: E402
from evolm.fitness import mean_log_likelihood  # noqa: E402
from evolm.models import build_model, count_parameters  # noqa: E402

NO_CUDA = "no CUDA device here: benchmarks/gpu.py measures nothing on CPU"
# GPT-2 small's shape, 16 layers deep: with 256 byte tokens GPT-2's 12 layers hold only 85 M parameters.
MODEL = [("model.width", 768), ("model.layers", 16), ("model.heads", 12), ("model.ff", 3072), ("model.context", 256)]
PLAIN_ROWS = (16, 32, 64, 128, 256)  # scoring: rows of the plain batch, each row a full context
PLAIN_GENERATION_ROWS = (32, 64, 128, 256, 512)  # plus the population's own total


def synced(function, device: torch.device):
    """``function`` followed by a wait for the device, so that its time covers the work it queued there."""

    def call():
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


def parameter_count(overrides) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        return count_parameters(build_model(build_config(overrides=overrides).model, 0))


def make(overrides, device: str, *extra):
    return make_worker(build_config(overrides=[*overrides, ("device", device), *extra]))


def rates_of(times: dict, tokens: dict) -> dict[str, list[float]]:
    return {name: [tokens[name] / t for t in values] for name, values in times.items()}


def best_of(rates: dict, prefix: str) -> tuple[int, dict]:
    """The row count whose plain rate has the best median, and every row count's median."""
    by_rows = {int(name.split()[-1]): statistics.median(r) for name, r in rates.items() if name.startswith(prefix)}
    return max(by_rows, key=lambda rows: by_rows[rows]), by_rows


def ratios(rates: dict, plain: float, chunks) -> dict:
    """Each genome's rate (lowrank: the faster of in place and its best batched chunk) over plain's."""
    lowrank_batched = {c: statistics.median(rates[f"lowrank {c}"]) for c in chunks if f"lowrank {c}" in rates}
    chunk = max(lowrank_batched, key=lambda c: lowrank_batched[c]) if lowrank_batched else None
    seed, in_place = statistics.median(rates["seed"]), statistics.median(rates["lowrank 1"])
    lowrank = max(in_place, lowrank_batched[chunk]) if chunk is not None else in_place
    result = {
        "plain_tokens_per_s": plain,
        "seed_tokens_per_s": seed,
        "lowrank_tokens_per_s": lowrank,
        "lowrank_in_place_tokens_per_s": in_place,
        "seed_ratio": seed / plain,
        "lowrank_ratio": lowrank / plain,
        "lowrank_in_place_ratio": in_place / plain,
    }
    if chunk is not None:
        result |= {
            "lowrank_batched_chunk": chunk,
            "lowrank_batched_tokens_per_s": lowrank_batched[chunk],
            "lowrank_batched_ratio": lowrank_batched[chunk] / plain,
        }
    return result


def scoring(overrides, device: str, population: int, chunks, plain_rows, repeats: int) -> dict:
    """(a): the likelihood fitness, population evaluation against plain forwards."""
    seed = make(overrides, device, ("genome.name", "seed"))
    lowrank = make(overrides, device, ("genome.name", "lowrank"), ("genome.batch_individuals", 1))
    batch = seed.fitness_context(0).batch
    shared = lowrank.fitness_context(0).batch  # the same tokens for every method
    shared.inputs.copy_(batch.inputs)
    shared.targets.copy_(batch.targets)
    per_call = population * batch.num_tokens
    counter = itertools.count(1)

    def evaluate(worker, chunk):
        def call():
            worker.population_chunk = chunk
            worker.evaluate(antithetic_genes(counter, population), 0)

        return call

    functions, tokens = {}, {}
    for rows in plain_rows:
        repeat = -(-rows // batch.inputs.shape[0])
        sized = Batch(batch.inputs.repeat(repeat, 1)[:rows], batch.targets.repeat(repeat, 1)[:rows])
        calls = max(1, per_call // sized.num_tokens)
        functions[f"plain {rows}"] = lambda sized=sized, calls=calls: [
            mean_log_likelihood(seed.model, sized) for _ in range(calls)
        ]
        tokens[f"plain {rows}"] = calls * sized.num_tokens
    methods = {"seed": evaluate(seed, 0), "lowrank 1": evaluate(lowrank, 0)}
    methods |= {f"lowrank {c}": evaluate(lowrank, c) for c in chunks if c > 1}
    functions |= methods
    tokens |= dict.fromkeys(methods, per_call)
    dev = torch.device(device)
    times = interleaved({name: synced(f, dev) for name, f in functions.items()}, repeats=repeats)
    rates = rates_of(times, tokens)
    best_rows, by_rows = best_of(rates, "plain ")
    result = {
        "fitness_batch": list(batch.inputs.shape),
        "plain_rows": best_rows,
        "plain_by_rows": by_rows,
        **ratios(rates, by_rows[best_rows], chunks),
        "methods": {name: summary(r) for name, r in rates.items()},
    }
    return result


def generation(overrides, device: str, population: int, prompts: int, new_tokens: int, plain_rows, repeats: int):
    """(b): a fitness that only writes, population evaluation against plain batched generation."""
    writing = [("fitness.terms", "diversity"), ("fitness.prompts", prompts), ("fitness.generate_tokens", new_tokens)]
    seed = make(overrides, device, ("genome.name", "seed"), *writing)
    lowrank = make(overrides, device, ("genome.name", "lowrank"), *writing)
    context = seed.fitness_context(0)
    per_call = population * prompts * new_tokens
    counter = itertools.count(1)
    model = seed.model  # the unperturbed model: evaluation restores it after every individual

    functions, tokens = {}, {}
    for rows in sorted({*plain_rows, population * prompts}):
        prompt = context.prompts.repeat(-(-rows // prompts), 1)[:rows]
        functions[f"plain {rows}"] = lambda prompt=prompt: model.generate(
            prompt, new_tokens, seed.fitness.temperature, torch.Generator().manual_seed(0)
        )
        tokens[f"plain {rows}"] = rows * new_tokens
    functions["seed"] = lambda: seed.evaluate(antithetic_genes(counter, population), 0)
    functions["lowrank 1"] = lambda: lowrank.evaluate(antithetic_genes(counter, population), 0)
    tokens |= {"seed": per_call, "lowrank 1": per_call}
    dev = torch.device(device)
    times = interleaved({name: synced(f, dev) for name, f in functions.items()}, repeats=repeats)
    rates = rates_of(times, tokens)
    best_rows, by_rows = best_of(rates, "plain ")
    result = {
        "prompts_per_individual": prompts,
        "prompt_tokens": int(context.prompts.shape[1]),
        "new_tokens": new_tokens,
        "population_rows": population * prompts,
        "plain_rows": best_rows,
        "plain_by_rows": by_rows,
        **ratios(rates, by_rows[best_rows], ()),
        "methods": {name: summary(r) for name, r in rates.items()},
    }
    return result


def measure(overrides, device: str, args) -> dict:
    """Both ratios for the model of ``overrides`` on ``device`` (the script passes CUDA; a test, a CPU)."""
    chunks = [int(c) for c in args.chunks.split(",")]
    scored = scoring(overrides, device, args.population, chunks, args.plain_rows, args.repeats)
    gc.collect()  # the scoring workers' models go before the writing workers build theirs
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    generated = generation(
        overrides, device, args.population, args.prompts, args.new_tokens, args.plain_generation_rows, args.repeats
    )
    return {
        "model": {key.split(".", 1)[1]: value for key, value in overrides},
        "population": args.population,
        "scoring": scored,
        "generation": generated,
    }


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--population", type=int, default=16, help="individuals per timed call (antithetic pairs)")
    parser.add_argument("--chunks", default="4,8,16", help="lowrank batched-pass chunk sizes to try")
    parser.add_argument("--prompts", type=int, default=8, help="prompts each individual continues (generation)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each prompt's continuation has")
    args = parser.parse_args(argv)
    args.plain_rows, args.plain_generation_rows = PLAIN_ROWS, PLAIN_GENERATION_ROWS
    return args


def main() -> None:
    args = parse()
    if not torch.cuda.is_available():
        print(NO_CUDA)
        return
    parameters = parameter_count(MODEL)
    print(f"model: {parameters:,} parameters ({', '.join(f'{k}={v}' for k, v in MODEL)})")
    torch.cuda.reset_peak_memory_stats()
    results = measure(MODEL, "cuda", args)
    results |= {
        "device": torch.cuda.get_device_name(),
        "parameters": parameters,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(),
        "repeats": args.repeats,
    }
    path = write_result("gpu", results)
    print(f"wrote {path} ({results['device']})")
    rows = []
    for part in ("scoring", "generation"):
        r = results[part]
        batched = (
            f"{r['lowrank_batched_ratio']:.2f} (x{r['lowrank_batched_chunk']})" if "lowrank_batched_chunk" in r else "-"
        )
        rows.append(
            [
                part,
                f"{r['plain_tokens_per_s']:,.0f} ({r['plain_rows']} rows)",
                f"{r['seed_ratio']:.2f}",
                f"{r['lowrank_in_place_ratio']:.2f}",
                batched,
                f"{r['lowrank_ratio']:.2f}",
            ]
        )
    print_table(["measure", "plain tok/s", "seed ratio", "lowrank in place", "lowrank batched", "lowrank ratio"], rows)


if __name__ == "__main__":
    main()
