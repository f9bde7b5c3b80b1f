"""Strategy x genome on the reference workload under one budget: validation loss over time, over seeds.

The default model and corpus, each method and seed for the same budget of compute seconds (the run's
wall time without validation, reports and checkpoints: ``budget_seconds``, as ``evolm run`` counts it)
on this machine, default 120 s. For every method and seed the validation loss is read from the run
folder's ``metrics.jsonl`` at each quarter of the budget (30/60/90/120 s at the default): the loss of
the last generation whose ``compute_seconds`` had not passed the mark, i.e. the model as it stood
then (validation runs every ``--report-every`` generations here, default 5: outside the budget, which counts
compute seconds only). Per method: mean and (population) standard deviation over seeds at every mark.

Methods: es/seed, es/lowrank, snes/seed, snes/lowrank (separable NES, per-parameter step sizes),
ga/seed, ga/vector over biases and norms. Nothing else runs on the machine while it measures.

    python benchmarks/strategies.py [--budget 120] [--seeds 0,1,2] [--methods snes/seed,es/seed]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_result  # noqa: E402

from evolm.config import build_config  # noqa: E402
from evolm.engine import run  # noqa: E402

METHODS = {
    "es/seed": [("strategy.name", "es"), ("genome.name", "seed")],
    "es/lowrank": [("strategy.name", "es"), ("genome.name", "lowrank")],
    "snes/seed": [("strategy.name", "snes"), ("genome.name", "seed")],
    "snes/lowrank": [("strategy.name", "snes"), ("genome.name", "lowrank")],
    "ga/seed": [("strategy.name", "ga"), ("genome.name", "seed"), ("strategy.sigma", 0.02)],
    "ga/vector": [
        ("strategy.name", "ga"),
        ("genome.name", "vector"),
        ("genome.params", "bias|norm"),
        ("strategy.sigma", 0.05),
    ],
}
CLOCK = "compute_seconds"  # what the budget counts; wall_seconds adds validation and checkpoints


def loss_at(rows: list[dict], seconds: float) -> float | None:
    """Validation loss of the last generation measured by ``seconds`` of compute (None: none by then)."""
    done = [row for row in rows if row[CLOCK] <= seconds and "val_loss" in row]
    return done[-1]["val_loss"] if done else None


def mean_std(values: list) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.mean(present), statistics.pstdev(present) if len(present) > 1 else 0.0


def run_method(method: str, seed: int, budget: float, marks: list[float], folder: Path, report_every: int = 5) -> dict:
    config = build_config(
        overrides=[
            *METHODS[method],
            ("seed", seed),
            ("generations", 1_000_000),
            ("budget_seconds", budget),
            # Validation (and the report) every few generations, outside the budget: a mark reads the last
            # measured model before it (about a second earlier at most, at ~5 generations a second).
            ("report_every", report_every),
        ]
    )
    out = folder / f"{method.replace('/', '-')}-{seed}"
    summary = run(config, out, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "val_loss_initial": summary["val_loss_initial"],
        "val_loss_final": summary["val_loss_final"],
        "val_loss_at": [loss_at(rows, mark) for mark in marks],
        "generations_at": [sum(row[CLOCK] <= mark for row in rows) for mark in marks],
        "generations": summary["generations"],
        "evaluations": summary["evaluations"],
        "compute_seconds": rows[-1][CLOCK] if rows else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="compute seconds per method and seed")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--report-every", type=int, default=5, help="generations between validation losses")
    parser.add_argument("--output", default="", help="write the JSON here instead of benchmarks/results/")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})")
    marks = [args.budget * k / 4 for k in (1, 2, 3, 4)]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            runs = []
            for seed in seeds:
                one = run_method(method, seed, args.budget, marks, Path(folder), args.report_every)
                runs.append(one)
                at = " ".join(f"{v:.3f}" if v is not None else "-" for v in one["val_loss_at"])
                print(
                    f"{method} seed {seed}: {one['val_loss_initial']:.3f} -> {at} "
                    f"({one['generations']} generations, {one['evaluations']} evaluations)",
                    flush=True,
                )
            at_marks = [mean_std([one["val_loss_at"][k] for one in runs]) for k in range(len(marks))]
            results[method] = {
                "val_loss_initial": runs[0]["val_loss_initial"],
                "val_loss_at_mean": [m for m, _ in at_marks],
                "val_loss_at_std": [s for _, s in at_marks],
                "val_loss_final_mean": mean_std([one["val_loss_final"] for one in runs])[0],
                "val_loss_final_std": mean_std([one["val_loss_final"] for one in runs])[1],
                "runs": dict(zip(map(str, seeds), runs)),
            }
    data = {"budget_seconds": args.budget, "clock": CLOCK, "marks_seconds": marks, "seeds": seeds, "methods": results}
    if args.output:
        path = Path(args.output)
        path.write_text(json.dumps({**data, "machine": machine(), "command": " ".join(sys.argv)}, indent=2) + "\n")
    else:
        path = write_result("strategies", data)
    print(f"wrote {path}")

    def cell(mean, std):
        return "-" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if len(seeds) > 1 else "")

    print_table(
        ["method", "start", *[f"at {mark:g} s" for mark in marks], "generations"],
        [
            [
                method,
                f"{r['val_loss_initial']:.3f}",
                *[cell(m, s) for m, s in zip(r["val_loss_at_mean"], r["val_loss_at_std"])],
                ",".join(str(one["generations"]) for one in r["runs"].values()),
            ]
            for method, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
