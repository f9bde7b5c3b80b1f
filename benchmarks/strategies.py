"""Strategy x genome on the reference workload under one wall-clock budget: final validation loss.

The default model and corpus, each method for the same wall time on this machine (default 180 s).
Methods: es/seed, es/lowrank, ga/seed, ga/vector over biases and norms.

    python benchmarks/strategies.py [--budget 180] [--seeds 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result  # noqa: E402

from evolm.config import build_config  # noqa: E402
from evolm.engine import run  # noqa: E402

METHODS = {
    "es/seed": [("strategy.name", "es"), ("genome.name", "seed")],
    "es/lowrank": [("strategy.name", "es"), ("genome.name", "lowrank")],
    "ga/seed": [("strategy.name", "ga"), ("genome.name", "seed"), ("strategy.sigma", 0.02)],
    "ga/vector": [
        ("strategy.name", "ga"),
        ("genome.name", "vector"),
        ("genome.params", "bias|norm"),
        ("strategy.sigma", 0.05),
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="wall seconds per method and seed")
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods.split(","):
            finals, initial, generations, evaluations = [], None, [], []
            for seed in seeds:
                config = build_config(
                    overrides=[
                        *METHODS[method],
                        ("seed", seed),
                        ("generations", 100_000),
                        ("budget_seconds", args.budget),
                    ]
                )
                summary = run(
                    config, Path(folder) / f"{method.replace('/', '-')}-{seed}", progress=False, log=lambda *a: None
                )
                finals.append(summary["val_loss_final"])
                initial = summary["val_loss_initial"]
                generations.append(summary["generations"])
                evaluations.append(summary["evaluations"])
                print(
                    f"{method} seed {seed}: {initial:.3f} -> {summary['val_loss_final']:.3f} "
                    f"({summary['generations']} generations, {summary['evaluations']} evaluations)",
                    flush=True,
                )
            results[method] = {
                "val_loss_initial": initial,
                "val_loss_final_mean": statistics.mean(finals),
                "val_loss_final_std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
                "val_loss_final": finals,
                "generations": generations,
                "evaluations": evaluations,
            }
    path = write_result("strategies", {"budget_seconds": args.budget, "seeds": seeds, "methods": results})
    print(f"wrote {path}")
    print_table(
        ["method", "val loss start", "val loss end", "generations", "evaluations"],
        [
            [
                m,
                f"{r['val_loss_initial']:.3f}",
                f"{r['val_loss_final_mean']:.3f}" + (f" ± {r['val_loss_final_std']:.3f}" if len(seeds) > 1 else ""),
                ",".join(map(str, r["generations"])),
                ",".join(map(str, r["evaluations"])),
            ]
            for m, r in results.items()
        ],
    )


if __name__ == "__main__":
    main()
