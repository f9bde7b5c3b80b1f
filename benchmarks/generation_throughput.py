"""Generated tokens per second of a population writing its continuations, against plain batched
generation of one model at the same total batch (part of benchmarks/throughput.py).

A generation-heavy fitness (self-feedback, a task's reward) makes every individual continue the same
B prompts. P individuals write P x B rows; plain inference of one model writes the same P x B rows
(the prompts stacked P times) in calls of 8 .. P x B rows, and its fastest call size is the
denominator. Timed, interleaved, in one process (fresh seeds at every repeat), under the same
parallel settings as the scoring part (one thread; all cores inside each operator; one Python
thread per core, each with its own model copy — for plain generation too):

- ``lowrank write``: :func:`evolm.population_writing.population_write` as the worker calls it, the
  population in chunks of ``c`` individuals per batched pass (each ``c`` in --write-chunks);
- ``lowrank evaluate``: the worker's whole evaluation with a writing-only fitness (``diversity``):
  the batched writing plus each individual's text statistics;
- ``seed evaluate`` / ``lowrank in place``: one individual at a time, its noise applied in place,
  writing alone (what every genome did before the batched pass).
"""

from __future__ import annotations

import itertools
import statistics
from concurrent.futures import ThreadPoolExecutor

import torch
from common import antithetic_genes, interleaved, summary

from evolm.config import build_config
from evolm.engine import make_worker
from evolm.evaluators.threads import ThreadEvaluator
from evolm.individuals import make_individual
from evolm.population_writing import population_write

WRITING_TERMS = "diversity=1"  # a term that reads nothing but the continuations


def measure_generation(overrides, repeats: int, population: int, write_chunks, settings) -> dict:
    def evaluator(*extra):
        config = build_config(
            overrides=[
                *overrides,
                ("fitness.terms", WRITING_TERMS),
                ("evaluator.workers", 2),
                ("evaluator.backend", "threads"),
                *extra,
            ]
        )
        return ThreadEvaluator(config, make_worker(config))

    chunk_for_two = max(1, population // 2)  # two Python threads: each replica writes half the population
    lowrank = evaluator(("genome.name", "lowrank"), ("genome.batch_individuals", chunk_for_two))
    in_place = evaluator(("genome.name", "lowrank"), ("genome.batch_individuals", 1))
    seed = evaluator(("genome.name", "seed"))
    worker = lowrank.worker
    writing = worker.fitness.writing(worker.fitness_context(0))
    rows, new_tokens = writing.prompts.shape[0], writing.new_tokens
    total = population * rows * new_tokens
    counter = itertools.count(1)
    pool = ThreadPoolExecutor(2)

    def write(chunk, python_threads):
        def one(replica, genes):
            for start in range(0, len(genes), chunk):
                population_write(replica.model, replica.genome, genes[start : start + chunk], writing)

        def call():
            genes = antithetic_genes(counter, population)
            if python_threads == 1:
                return one(worker, genes)
            half = len(genes) // 2
            parts = [(lowrank.replicas[0], genes[:half]), (lowrank.replicas[1], genes[half:])]
            return [f.result() for f in [pool.submit(one, r, g) for r, g in parts]]

        return call

    def evaluate(chosen, python_threads):
        def call():
            genes = antithetic_genes(counter, population)
            if python_threads == 1:
                return chosen.worker.evaluate(genes, 0)
            return chosen.evaluate([make_individual(g) for g in genes], 0)

        return call

    models = [replica.model for replica in lowrank.replicas]
    stacked = writing.prompts.repeat(population, 1)

    def plain(call_rows, python_threads):
        def generate(model, part):
            for start in range(0, part.shape[0], call_rows):
                model.generate(part[start : start + call_rows], new_tokens, writing.temperature, torch.Generator())

        if python_threads == 1:
            return lambda: generate(models[0], stacked)
        half = stacked.shape[0] // 2
        parts = [stacked[:half], stacked[half:]]
        return lambda: [f.result() for f in [pool.submit(generate, m, p) for m, p in zip(models, parts)]]

    plain_rows = sorted({r for r in (8, 16, 32, 64, 128, 256) if r <= population * rows} | {population * rows})
    per_setting = {}
    for setting, (intra_op, python_threads) in settings.items():
        torch.set_num_threads(intra_op)
        functions = {f"plain {r}": plain(r, python_threads) for r in plain_rows}
        chunks = [c for c in write_chunks if python_threads == 1 or c <= chunk_for_two]
        functions.update({f"lowrank write {c}": write(c, python_threads) for c in chunks})
        functions["lowrank evaluate"] = evaluate(lowrank, python_threads)
        functions["lowrank in place"] = evaluate(in_place, python_threads)
        functions["seed evaluate"] = evaluate(seed, python_threads)
        times = interleaved(functions, repeats=repeats)
        rates = {name: [total / t for t in values] for name, values in times.items()}
        best_rows = max(plain_rows, key=lambda r: statistics.median(rates[f"plain {r}"]))
        per_setting[setting] = {
            "plain_rows": best_rows,
            "plain": rates[f"plain {best_rows}"],
            **{name: r for name, r in rates.items() if not name.startswith("plain ")},
        }
    pool.shutdown()
    for chosen in (lowrank, in_place, seed):
        chosen.close()

    def best(name):
        found = [r[name] for r in per_setting.values() if name in r]
        return statistics.median(max(found, key=statistics.median))

    write_names = sorted({n for r in per_setting.values() for n in r if n.startswith("lowrank write")})
    best_write = max(write_names, key=best)
    plain_rate = best("plain")
    return {
        "prompts": rows,
        "new_tokens": new_tokens,
        "population": population,
        "settings": {
            k: {"plain_rows": r["plain_rows"], **{m: summary(v) for m, v in r.items() if m != "plain_rows"}}
            for k, r in per_setting.items()
        },
        "plain_tokens_per_s": plain_rate,
        "lowrank_write_chunk": int(best_write.rsplit(" ", 1)[1]),
        "lowrank_tokens_per_s": best(best_write),
        "lowrank_ratio": best(best_write) / plain_rate,
        "lowrank_evaluate_ratio": best("lowrank evaluate") / plain_rate,
        "lowrank_in_place_ratio": best("lowrank in place") / plain_rate,
        "seed_ratio": best("seed evaluate") / plain_rate,
    }
