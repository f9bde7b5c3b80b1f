"""``evolm compare``: evolution and gradient baselines side by side on the same corpus, model,
initial weights and budget (wall seconds or forward tokens), over several seeds. With a task
(``--task``, ``--reward``) :mod:`evolm.compare_tasks` runs instead, on this module's runner.

Each (method, seed) runs in its own subprocess, so its peak memory is its own. Writes
``compare.md`` (a table), ``compare.json`` (the same rows) and ``compare.png`` (validation loss
against wall time and against forward tokens, one line per method).

After each run, compare itself judges the run's final weights (``model.safetensors``) the same way
for every method (:class:`Judge`): the final model continues fixed validation prompts with seeded
sampling (the per-generation report's prompts, lengths, temperature and sampling seed,
:meth:`evolm.fitness.Fitness.report`), and the frozen initial model (built from the same config and
seed as every method's start) scores those continuations: ``reference_score``. The final model's
own score of the same text (``self_score``) and its distinct-2 come with it. Runs' own
``self_score_final`` is not used: evolution runs report the model judging itself, the baselines the
frozen model, on different prompts and lengths.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from evolm.assembly import worker_from_config
from evolm.baselines import BASELINES
from evolm.config import build_config
from evolm.engine import run
from evolm.errors import UsageError
from evolm.fitness import REPORT_NEW_TOKENS, REPORT_PROMPTS
from evolm.rundir import peak_rss_mb
from evolm.sampling import load_run_model

# Evolution methods: config overrides on top of the user's; "hybrid" is es with gradient refinement.
EVOLUTION = {
    "es": [("strategy.name", "es")],
    "ga": [("strategy.name", "ga"), ("genome.name", "seed"), ("strategy.sigma", "0.02")],
    "hybrid": [("strategy.name", "es"), ("refine.every", "5"), ("refine.steps", "10")],
    "pbt": [("strategy.name", "pbt"), ("strategy.population_size", "4")],
    "cmaes": [("strategy.name", "cmaes")],
}
BASELINE_NAMES = tuple(BASELINES)
METHODS = (*EVOLUTION, *BASELINE_NAMES)
# Baselines that maximise a task's reward: without a task they have nothing to optimise.
TASK_ONLY = ("grpo", "rloo")
# A self-feedback term, if the user turns one on, is scored by the frozen initial model, as reinforce's reward is.
COMMON = [("fitness.scorer", "reference"), ("generations", "1000000")]
# What each column of the table and of compare.json's rows means: written into compare.json.
COLUMNS = {
    "val_loss_final": "validation loss of the final weights (nats per token), mean over seeds; val_loss_std its std",
    "reference_score": "mean log-likelihood per token that the frozen initial model gives the final model's continuations "
    "of fixed validation prompts (the same judge, prompts, lengths, temperature and sampling seed for "
    "every method), mean over seeds; reference_score_std its std",
    "self_score": "the final model's own mean log-likelihood per token of those same continuations (the model judges itself)",
    "distinct_2": "distinct bigrams / bigrams of those same continuations",
    "forward_tokens": "tokens through forward passes for fitness or training (validation and reports excluded), mean over seeds",
    "wall_seconds": "the run's wall seconds, mean over seeds",
    "peak_rss_mb": "peak resident memory of the run's process, max over seeds",
}


def parse_methods(text: str, allowed=METHODS, task: bool = False) -> list[str]:
    """The comma-separated ``--methods``, each checked against ``allowed``; without a task, no task-only baseline."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise UsageError(f"--methods: unknown method {method!r} (choose from {', '.join(allowed)})")
        if method not in allowed:
            raise UsageError(f"--methods: {method} cannot run a task (task methods: {', '.join(allowed)})")
        if method in TASK_ONLY and not task:
            raise UsageError(f"--methods: {method} optimises a task's reward and needs --task NAME or --reward")
    if not methods:
        raise UsageError("--methods names no method")
    return methods


def run_one(
    method: str, seed: int, out_dir: Path, overrides, budget_seconds, budget_tokens, settings: dict | None = None
) -> dict:
    """Run one method and seed in this process; returns its summary (with peak_rss_mb).

    ``settings``: the method's own settings on top of everything else, e.g. a tuned value; a dotted key
    (``strategy.sigma``) is a config override after the method's, a plain one (``learning_rate``) a
    baseline's keyword option."""

    def quiet(*args) -> None:
        """The child's output is its summary line alone."""

    settings = settings or {}
    config_settings = [*COMMON, *overrides, ("seed", seed), *EVOLUTION.get(method, [])]
    config_settings += [(key, value) for key, value in settings.items() if "." in key]
    options = {key: value for key, value in settings.items() if "." not in key}
    if method in EVOLUTION:
        config_settings += [("budget_seconds", budget_seconds or 0), ("budget_tokens", budget_tokens or 0)]
        summary = run(build_config(overrides=config_settings), out_dir, progress=False, log=quiet)
        summary["peak_rss_mb"] = peak_rss_mb()
    else:
        summary = BASELINES[method](
            build_config(overrides=config_settings),
            out_dir,
            budget_seconds=budget_seconds,
            budget_tokens=budget_tokens,
            log=quiet,
            **options,
        )
    return summary


def _child(argv: list[str]) -> None:
    method, seed, out_dir, spec = argv[0], int(argv[1]), Path(argv[2]), json.loads(argv[3])
    overrides = [tuple(p) for p in spec["overrides"]]
    summary = run_one(
        method, seed, out_dir, overrides, spec["budget_seconds"], spec["budget_tokens"], spec.get("settings")
    )
    print("EVOLM-SUMMARY " + json.dumps(summary, default=str))


def run_in_child(method: str, seed: int, run_dir: Path, spec: dict) -> tuple[dict | None, str | None]:
    """Run one (method, seed) in its own process (:func:`run_one`), so its peak memory is its own.

    ``spec``: ``overrides``, ``budget_seconds``, ``budget_tokens`` and optionally ``settings``.
    Returns (summary, None), or (None, the last line of the child's error output)."""
    result = subprocess.run(
        [sys.executable, "-m", "evolm.compare", "--child", method, str(seed), str(run_dir), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("EVOLM-SUMMARY ")]
    if result.returncode != 0 or not lines:
        return None, (result.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(lines[-1][len("EVOLM-SUMMARY ") :]), None


class Judge:
    """The frozen initial model of one seed, and the fixed prompts every method's final model continues.

    Built from the compare's common settings and the seed, so it is every method's starting model
    (``build_model(config.model, seed)``). It reuses the run report's machinery
    (:meth:`evolm.fitness.Fitness.report` with ``scorer=reference``): evenly spaced validation prompts,
    ``REPORT_NEW_TOKENS`` new tokens at ``fitness.temperature``, sampled from a generator seeded with
    ``derive_seed(seed, "fitness-report")``, scored by a frozen copy of the initial model.
    """

    def __init__(self, overrides, seed: int):

        config = build_config(
            overrides=[
                *COMMON,
                *overrides,
                ("seed", seed),
                ("fitness.terms", "self=1"),
                ("fitness.scorer", "reference"),
            ]
        )
        self.worker = worker_from_config(config)
        self.initial = self._figures(self.worker.model)  # the initial model judging its own text

    def _figures(self, model) -> dict:
        figures = self.worker.fitness.report(model, -1)
        return {
            "reference_score": figures["reference_score"],
            "self_score": figures["self_score"],
            "distinct_2": figures["distinct_2"],
        }

    def __call__(self, run_dir: Path) -> dict:
        """Judge the final weights a run left in ``run_dir``."""

        return self._figures(load_run_model(run_dir).to(self.worker.device))


def metrics_curve(run_dir: Path, column: str = "val_loss") -> list[dict]:
    """A run's ``column`` per metrics line with its compute seconds (the budget's clock) and forward tokens."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = "compute_seconds" if rows and "compute_seconds" in rows[0] else "wall_seconds"  # older runs: wall
    return [
        {"seconds": r[seconds], "forward_tokens": r["forward_tokens"], column: r[column]}
        for r in rows
        if r.get(column) is not None
    ]


def compare(
    methods,
    out_dir: Path,
    seeds: int = 1,
    budget_seconds: float | None = None,
    budget_tokens: int | None = None,
    overrides=(),
    log=print,
) -> list[dict]:
    if not budget_seconds and not budget_tokens:
        raise UsageError("evolm compare needs a budget: --budget-seconds S or --budget-tokens N")
    out_dir = Path(out_dir)
    if (out_dir / "compare.json").exists():
        raise UsageError(f"output folder {out_dir} already holds a comparison; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"overrides": [list(p) for p in overrides], "budget_seconds": budget_seconds, "budget_tokens": budget_tokens}
    rows: list[dict] = []
    curves: dict[str, list] = {}
    judges: dict = {}
    for method in methods:
        summaries, failure = [], None
        for seed in range(seeds):
            run_dir = out_dir / f"{method}-seed{seed}"
            log(f"evolm compare: {method} seed {seed} ...")
            summary, failure = run_in_child(method, seed, run_dir, spec)
            if summary is None:
                # One failing method never costs the others' results: it becomes a row saying why.
                log(f"evolm compare: {method} seed {seed} failed: {failure}")
                break
            try:
                if seed not in judges:
                    judges[seed] = Judge(overrides, seed)
                summary["judged"] = judges[seed](run_dir)
            except UsageError as error:
                failure = f"judging the final weights: {error}"
                log(f"evolm compare: {method} seed {seed} failed: {failure}")
                break
            summaries.append(summary)
            curves.setdefault(method, []).append(metrics_curve(run_dir))
        if failure is not None:
            rows.append({"method": method, "error": failure})
            continue
        finals = [s["val_loss_final"] for s in summaries]

        def mean(key, summaries=summaries):
            return statistics.mean(float(s[key]) for s in summaries if s.get(key) is not None)

        def judged(key, summaries=summaries):
            return [s["judged"][key] for s in summaries]

        rows.append(
            {
                "method": method,
                "val_loss_final": statistics.mean(finals),
                "val_loss_std": statistics.pstdev(finals) if len(finals) > 1 else 0.0,
                "reference_score": mean_or_nan(judged("reference_score")),
                "reference_score_std": std_or_zero(judged("reference_score")),
                "self_score": mean_or_nan(judged("self_score")),
                "distinct_2": mean_or_nan(judged("distinct_2")),
                "forward_tokens": mean("forward_tokens"),
                "wall_seconds": mean("wall_seconds"),
                "peak_rss_mb": max(float(s["peak_rss_mb"]) for s in summaries),
                "seeds": seeds,
            }
        )
        log(
            f"evolm compare: {method}: validation loss {rows[-1]['val_loss_final']:.3f} ± {rows[-1]['val_loss_std']:.3f}"
        )
    budget = f"{budget_seconds:g} s" if budget_seconds else f"{budget_tokens:,} forward tokens"
    judge: dict = {
        "scorer": "the frozen initial model (the same config and seed as every method's start)",
        "prompts": REPORT_PROMPTS,
        "new_tokens": REPORT_NEW_TOKENS,
        "sampling_seed": "derive_seed(seed, 'fitness-report'), the same for every method of a seed",
        # The initial model judging its own continuations: where every method starts.
        "initial": {
            key: mean_or_nan([j.initial[key] for j in judges.values()]) for key in ("reference_score", "distinct_2")
        },
    }
    if judges:
        config = next(iter(judges.values())).worker.fitness
        judge.update(prompt_tokens=config.prompt_tokens, temperature=config.temperature)
    document = {
        "budget": budget,
        "seeds": seeds,
        "columns": COLUMNS,
        "judge": judge,
        "rows": rows,
        "machine": machine(),
        "command": invoking_command(),
    }
    (out_dir / "compare.json").write_text(json.dumps(json_ready(document), indent=2) + "\n")
    (out_dir / "compare.md").write_text(markdown_table(rows, budget, seeds, judge["initial"]))
    plot_comparison(curves, out_dir / "compare.png")
    return rows


def machine() -> dict:
    """Where the comparison ran: CPU model, cores, Python, torch (and Ray) versions."""

    cpu = platform.processor()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        info["ray"] = importlib.metadata.version("ray")  # without importing Ray
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def invoking_command() -> str | None:
    """The ``evolm compare ...`` command line this process runs, None when called from Python."""
    if Path(sys.argv[0]).name not in ("evolm", "__main__.py") or "compare" not in sys.argv[1:]:
        return None
    return shlex.join(["evolm", *sys.argv[1:]])


def mean_or_nan(values: list[float]) -> float:
    return statistics.mean(values) if values else math.nan


def std_or_zero(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def json_ready(value):
    """NaN (a diverged model's scores) as null, so compare.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def markdown_table(rows: list[dict], budget: str, seeds: int, initial: dict | None = None) -> str:
    start = ""
    if initial and initial.get("reference_score") is not None and math.isfinite(initial["reference_score"]):
        start = (
            f" At the start (the initial model judging its own text): reference score "
            f"{initial['reference_score']:.3f}, distinct-2 {initial['distinct_2']:.3f}."
        )
    lines = [
        f"Budget: {budget} per run, {seeds} seed(s); mean (± std) over seeds.",
        "",
        "Val loss: validation loss of the final weights (nats per token). The final model continues fixed "
        "validation prompts with seeded sampling, the same prompts, lengths, temperature and seed for every "
        "method; reference score: mean log-likelihood per token of those continuations under the frozen "
        "initial model (one judge for all methods); own score: the final model's own log-likelihood of the "
        "same continuations; distinct-2: distinct bigrams / bigrams of the same continuations." + start,
        "",
        (
            "| method | val loss | reference score (frozen initial model) | own score (model judges itself) "
            "| distinct-2 | forward tokens | wall s | peak RSS MB |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]

    def number(value) -> str:
        return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].replace('|', '/')} | | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['val_loss_final']:.3f} ± {r['val_loss_std']:.3f} "
            f"| {number(r['reference_score'])} ± {number(r['reference_score_std'])} | {number(r['self_score'])} "
            f"| {number(r['distinct_2'])} | {r['forward_tokens']:,.0f} | {r['wall_seconds']:.1f} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(curves: dict, path: Path, column: str = "val_loss", label: str = "validation loss (nats)") -> None:
    """``column`` against wall time and against forward tokens: one colour per method, one line per seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    by_time, by_tokens = figure.subplots(1, 2)
    for number, (method, runs) in enumerate(curves.items()):
        color = f"C{number % 10}"  # one colour per method, shared by its seeds
        for index, curve in enumerate(runs):
            name = method if index == 0 else None
            values = [p[column] for p in curve]  # a marker per logged line: a short run may log once
            by_time.plot([p["seconds"] for p in curve], values, ".-", color=color, label=name)
            by_tokens.plot([p["forward_tokens"] for p in curve], values, ".-", color=color, label=name)
    by_time.set(xlabel="compute seconds (wall time without measuring)", ylabel=label, title="against wall time")
    by_tokens.set(xlabel="forward tokens", ylabel=label, title="against forward tokens", xscale="log")
    if curves:  # an empty legend warns
        by_time.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    _child(sys.argv[2:])
