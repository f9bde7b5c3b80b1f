"""Whole generations of the default run, as the engine runs them, in-process, on threads and on Ray.

``benchmarks/ray_scaling.py`` times ``step_generation`` alone (ask, evaluate, tell, the update
broadcast, applied and checksummed). This script times what a user waits for: the engine's own loop
(:func:`evolm.engine._evolve`) on the default config (``evolm run`` with no arguments: es, seed genome,
population 48, a 16x64 fitness batch), so a generation also holds the validation and the report on the
generations that measure (``report_every``) and the metrics line. Per setup, ``--generations``
generations (no checkpoints); the steady state is the mean time per generation from generation 10 to the
last (Ray actors and threads have started by then), measured at the start of each ``evaluate`` call.

For Ray runs the driver's share is the time the driver is not blocked waiting for actors (ask, tell,
its own copy of the update, validation and the report on measuring generations, bookkeeping) over
the generation's time: an upper bound on the driver-only share, since the driver applies its copy
of the update while the actors apply theirs.

Setups run interleaved, ``--repetitions`` rounds; figures are medians with min and max. Writes
``benchmarks/results/generations.json`` and prints the table.

    python benchmarks/generations.py [--generations 60] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_result  # noqa: E402

from evolm.config import build_config  # noqa: E402
from evolm.engine import _evolve, make_worker  # noqa: E402
from evolm.evaluators import make_evaluator  # noqa: E402
from evolm.rundir import prepare_run_dir  # noqa: E402

STEADY_FROM = 10  # generations before this one are start-up (actors starting, first reports)
SETUPS = {
    "in_process": [],
    "threads_2": [("evaluator.backend", "threads"), ("evaluator.workers", 2)],
    "ray_1_actor": [("evaluator.workers", 1)],
    "ray_2_actors": [("evaluator.workers", 2)],
    "in_process_report_every_1": [("report_every", 1)],
    "ray_2_actors_report_every_1": [("evaluator.workers", 2), ("report_every", 1)],
}


def quiet(*_args) -> None:
    pass


def run_setup(overrides: list, generations: int, folder: Path) -> dict:
    """One engine run; seconds per steady-state generation and, on Ray, the driver's share."""
    config = build_config(None, [("generations", generations), ("checkpoint_every", 0), *overrides])
    worker = make_worker(config)
    evaluator = make_evaluator(config, worker)
    marks: list[tuple[float, float]] = []
    evaluate = evaluator.evaluate

    def timed(population, generation):
        marks.append((time.perf_counter(), getattr(evaluator, "wait_seconds", 0.0)))
        return evaluate(population, generation)

    evaluator.evaluate = timed
    prepare_run_dir(folder, overwrite=True)
    _evolve(config, worker, folder, False, quiet, evaluator=evaluator)
    (start, waited_start), (end, waited_end) = marks[STEADY_FROM], marks[-1]
    seconds = (end - start) / (len(marks) - 1 - STEADY_FROM)
    figures = {"seconds_per_generation": seconds}
    if hasattr(evaluator, "wait_seconds"):
        figures["driver_share"] = 1.0 - (waited_end - waited_start) / (end - start)
    return figures


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=60)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    names = args.setups.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as folder:
        for repetition in range(args.repetitions):
            for name in names:
                figures = run_setup(SETUPS[name], args.generations, Path(folder) / f"{name}-{repetition}")
                runs[name].append(figures)
                share = f", driver share {figures['driver_share']:.1%}" if "driver_share" in figures else ""
                print(
                    f"{name} round {repetition}: {figures['seconds_per_generation'] * 1000:.0f} ms{share}", flush=True
                )
    result: dict = {"setups": {}}
    for name, figures in runs.items():
        entry = {"ms_per_generation": spread([f["seconds_per_generation"] * 1000 for f in figures])}
        if "driver_share" in figures[0]:
            entry["driver_share"] = spread([f["driver_share"] for f in figures])
        result["setups"][name] = entry

    def median_ratio(slow: str, fast: str) -> float | None:
        if slow not in runs or fast not in runs:
            return None
        pairs = zip(runs[slow], runs[fast])
        return statistics.median(a["seconds_per_generation"] / b["seconds_per_generation"] for a, b in pairs)

    result["speedup_2_actors_over_1"] = median_ratio("ray_1_actor", "ray_2_actors")
    result["ray_2_actors_over_in_process"] = median_ratio("in_process", "ray_2_actors")
    result["threads_2_over_in_process"] = median_ratio("in_process", "threads_2")
    path = write_result(
        "generations",
        {
            "machine": {**machine(), "torch_threads": torch.get_num_threads()},
            "workload": "the default evolm run (es, seed genome, population 48, 16x64 fitness batch), no checkpoints",
            "generations": args.generations,
            "steady_from": STEADY_FROM,
            "repetitions": args.repetitions,
            **result,
        },
    )
    rows = []
    for name, entry in result["setups"].items():
        ms = entry["ms_per_generation"]
        share = entry.get("driver_share")
        rows.append(
            [
                name,
                f"{ms['median']:.0f} ({ms['min']:.0f}-{ms['max']:.0f})",
                f"{share['median']:.1%} ({share['min']:.1%}-{share['max']:.1%})" if share else "-",
            ]
        )
    print(f"wrote {path}")
    print_table(["setup", "ms per generation, median (min-max)", "driver share"], rows)
    for key in ("speedup_2_actors_over_1", "ray_2_actors_over_in_process", "threads_2_over_in_process"):
        if result[key] is not None:
            print(f"{key}: {result[key]:.2f}x")


if __name__ == "__main__":
    main()
