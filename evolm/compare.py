"""``evolm compare``: evolution and gradient baselines side by side on the same corpus, model,
initial weights and budget (wall seconds or forward tokens), over several seeds.

Each (method, seed) runs in its own subprocess, so its peak memory is its own. Writes
``compare.md`` (a table), ``compare.json`` (the same rows) and ``compare.png`` (validation loss
against wall time and against forward tokens, one line per method).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from evolm.errors import UsageError

# Evolution methods: config overrides on top of the user's; "hybrid" is es with gradient refinement.
EVOLUTION = {
    "es": [("strategy.name", "es")],
    "ga": [("strategy.name", "ga"), ("genome.name", "seed"), ("strategy.sigma", "0.02")],
    "hybrid": [("strategy.name", "es"), ("refine.every", "5"), ("refine.steps", "10")],
    "pbt": [("strategy.name", "pbt"), ("strategy.population_size", "4")],
}
BASELINE_NAMES = ("adam", "reinforce", "mezo")
METHODS = (*EVOLUTION, *BASELINE_NAMES)
# Every method's self-score is judged by the same frozen initial model, so the column compares.
COMMON = [("fitness.scorer", "reference"), ("generations", "1000000")]


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise UsageError(f"--methods: unknown method {method!r} (choose from {', '.join(METHODS)})")
    if not methods:
        raise UsageError("--methods names no method")
    return methods


def run_one(method: str, seed: int, out_dir: Path, overrides, budget_seconds, budget_tokens) -> dict:
    """Run one method and seed in this process; returns its summary (with peak_rss_mb)."""
    from evolm.baselines import BASELINES, peak_rss_mb
    from evolm.config import build_config
    from evolm.engine import run

    settings = [*COMMON, *overrides, ("seed", seed)]
    quiet = lambda *args: None  # noqa: E731
    if method in EVOLUTION:
        settings += [*EVOLUTION[method], ("budget_seconds", budget_seconds or 0), ("budget_tokens", budget_tokens or 0)]
        summary = run(build_config(overrides=settings), out_dir, progress=False, log=quiet)
        summary["peak_rss_mb"] = peak_rss_mb()
    else:
        summary = BASELINES[method](build_config(overrides=settings), out_dir, budget_seconds=budget_seconds,
                                    budget_tokens=budget_tokens, log=quiet)
    return summary


def _child(argv: list[str]) -> None:
    method, seed, out_dir, spec = argv[0], int(argv[1]), Path(argv[2]), json.loads(argv[3])
    summary = run_one(method, seed, out_dir, [tuple(p) for p in spec["overrides"]], spec["budget_seconds"], spec["budget_tokens"])
    print("EVOLM-SUMMARY " + json.dumps(summary, default=str))


def _curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{"wall_seconds": r["wall_seconds"], "forward_tokens": r["forward_tokens"], "val_loss": r["val_loss"]} for r in rows]


def compare(methods, out_dir: Path, seeds: int = 1, budget_seconds: float | None = None, budget_tokens: int | None = None,
            overrides=(), log=print) -> list[dict]:
    if not budget_seconds and not budget_tokens:
        raise UsageError("evolm compare needs a budget: --budget-seconds S or --budget-tokens N")
    out_dir = Path(out_dir)
    if (out_dir / "compare.json").exists():
        raise UsageError(f"output folder {out_dir} already holds a comparison; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({"overrides": [list(p) for p in overrides], "budget_seconds": budget_seconds, "budget_tokens": budget_tokens})
    rows, curves = [], {}
    for method in methods:
        summaries, failure = [], None
        for seed in range(seeds):
            run_dir = out_dir / f"{method}-seed{seed}"
            log(f"evolm compare: {method} seed {seed} ...")
            result = subprocess.run([sys.executable, "-m", "evolm.compare", "--child", method, str(seed), str(run_dir), spec],
                                    capture_output=True, text=True)
            lines = [line for line in result.stdout.splitlines() if line.startswith("EVOLM-SUMMARY ")]
            if result.returncode != 0 or not lines:
                # One failing method never costs the others' results: it becomes a row saying why.
                failure = (result.stderr.strip().splitlines() or ["no output"])[-1]
                log(f"evolm compare: {method} seed {seed} failed: {failure}")
                break
            summaries.append(json.loads(lines[-1][len("EVOLM-SUMMARY "):]))
            curves.setdefault(method, []).append(_curve(run_dir))
        if failure is not None:
            rows.append({"method": method, "error": failure})
            continue
        finals = [s["val_loss_final"] for s in summaries]
        mean = lambda key: statistics.mean(float(s[key]) for s in summaries if s.get(key) is not None)  # noqa: E731
        rows.append({
            "method": method,
            "val_loss_final": statistics.mean(finals),
            "val_loss_std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
            "self_score": mean("self_score_final"),
            "distinct_2": mean("distinct_2_final"),
            "forward_tokens": mean("forward_tokens"),
            "wall_seconds": mean("wall_seconds"),
            "peak_rss_mb": max(float(s["peak_rss_mb"]) for s in summaries),
            "seeds": seeds,
        })
        log(f"evolm compare: {method}: validation loss {rows[-1]['val_loss_final']:.3f} ± {rows[-1]['val_loss_std']:.3f}")
    budget = f"{budget_seconds:g} s" if budget_seconds else f"{budget_tokens:,} forward tokens"
    (out_dir / "compare.json").write_text(json.dumps({"budget": budget, "rows": rows}, indent=2) + "\n")
    (out_dir / "compare.md").write_text(markdown_table(rows, budget, seeds))
    plot_comparison(curves, out_dir / "compare.png")
    return rows


def markdown_table(rows: list[dict], budget: str, seeds: int) -> str:
    lines = [f"Budget: {budget} per run, {seeds} seed(s); validation loss mean ± std over seeds.", "",
             "| method | val loss | self-score | distinct-2 | forward tokens | wall s | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].replace('|', '/')} | | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['val_loss_final']:.3f} ± {r['val_loss_std']:.3f} | {r['self_score']:.3f} | "
                     f"{r['distinct_2']:.3f} | {r['forward_tokens']:,.0f} | {r['wall_seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_comparison(curves: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    by_time, by_tokens = figure.subplots(1, 2)
    for number, (method, runs) in enumerate(curves.items()):
        color = f"C{number % 10}"  # one colour per method, shared by its seeds
        for index, curve in enumerate(runs):
            label = method if index == 0 else None
            by_time.plot([p["wall_seconds"] for p in curve], [p["val_loss"] for p in curve], color=color, label=label)
            by_tokens.plot([p["forward_tokens"] for p in curve], [p["val_loss"] for p in curve], color=color, label=label)
    by_time.set(xlabel="wall seconds", ylabel="validation loss (nats)", title="against wall time")
    by_tokens.set(xlabel="forward tokens", ylabel="validation loss (nats)", title="against forward tokens", xscale="log")
    by_time.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    _child(sys.argv[2:])
