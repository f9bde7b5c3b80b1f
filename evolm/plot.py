"""``fitness.png`` of a run: best/mean fitness, validation loss and any diversity figures per generation.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works
headless and never disturbs an interactive session that imports evolm.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from evolm.errors import UsageError

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "fitness.png"
# Columns drawn in the third panel when present: diversity / self-judgement objectives.
DIVERSITY_PREFIXES = ("distinct_", "self_score", "diversity", "novelty", "margin")
SCORE_PREFIXES = ("self_score", "margin")  # log-likelihood-like: drawn on their own axis
_HUGE = 1e300  # the engine writes +-inf as +-1e308: not a plottable value


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``; a half-written last line (a killed run) is skipped."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} is a file, not a folder")
    path = run_dir / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"run folder {run_dir} is not an evolm run: {path} is missing") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"metrics file {path} cannot be read: {getattr(error, 'strerror', None) or error}") from None
    lines = text.split("\n")
    complete = text.endswith("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not complete:
                break  # the line a killed run was writing
            raise UsageError(f"metrics file {path} line {number} is not valid JSON") from None
        if not isinstance(row, dict):
            raise UsageError(f"metrics file {path} line {number} is not a JSON object")
        rows.append(row)
    if not rows:
        raise UsageError(f"metrics file {path} holds no generations yet")
    return rows


def _value(row: dict, key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    value = float(value)
    return value if math.isfinite(value) and abs(value) < _HUGE else math.nan


def _measured(generations: list, rows: list[dict], key: str) -> tuple[list, list]:
    """The (generation, value) pairs of the rows that measured ``key``: validation and the report run every
    ``report_every`` generations, and a line through NaN gaps would draw nothing."""
    pairs = [(g, _value(r, key)) for g, r in zip(generations, rows)]
    kept = [(g, v) for g, v in pairs if not math.isnan(v)]
    return [g for g, _ in kept], [v for _, v in kept]


def _has(rows: list[dict], key: str) -> bool:
    return any(not math.isnan(_value(row, key)) for row in rows)


def diversity_columns(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in keys and key.startswith(DIVERSITY_PREFIXES) and not key.startswith("evaluator_"):
                keys.append(key)
    return [key for key in keys if _has(rows, key)]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``fitness.png`` (or ``out``) for the run in ``run_dir``; returns the image path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    generations = [row.get("generation", index) for index, row in enumerate(rows)]
    diversity = diversity_columns(rows)
    panels = 3 if diversity else 2

    figure = Figure(figsize=(8, 2.8 * panels), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]

    fitness_axis = axes[0]
    for key, label, style in (("best_fitness", "best", "-"), ("mean_fitness", "mean", "--")):
        if _has(rows, key):
            fitness_axis.plot(generations, [_value(r, key) for r in rows], style, label=label)
    if _has(rows, "mean_fitness") and _has(rows, "std_fitness"):
        mean = [_value(r, "mean_fitness") for r in rows]
        std = [_value(r, "std_fitness") for r in rows]
        fitness_axis.fill_between(
            generations,
            [m - s for m, s in zip(mean, std)],
            [m + s for m, s in zip(mean, std)],
            alpha=0.2,
            label="mean ± std",
        )
    fitness_axis.set_ylabel("fitness")
    fitness_axis.set_title(f"{run_dir.name}: fitness per generation")

    loss_axis = axes[1]
    if _has(rows, "val_loss"):
        loss_axis.plot(*_measured(generations, rows, "val_loss"), color="tab:red", label="validation loss")
    loss_axis.set_ylabel("validation loss (nats/token)")

    if diversity:
        # Diversity fractions (0..1) and scores (log-likelihoods) have different scales: twin axes when both appear.
        scores = [key for key in diversity if key.startswith(SCORE_PREFIXES)]
        fractions = [key for key in diversity if key not in scores]
        left = axes[2]
        right = left.twinx() if scores and fractions else left
        colors = iter(f"C{i}" for i in range(10 * len(diversity)))
        for axis, keys in ((left, fractions or scores), (right, scores if fractions else [])):
            for key in keys:
                axis.plot(*_measured(generations, rows, key), label=key, color=next(colors))
        left.set_ylabel("diversity" if fractions else "self-score")
        if right is not left:
            right.set_ylabel("self-score")
            handles = [h for axis in (left, right) for h in axis.get_legend_handles_labels()[0]]
            left.legend(handles, [h.get_label() for h in handles], loc="best", fontsize="small")

    for axis in axes:
        axis.grid(True, alpha=0.3)
        if axis.get_legend() is None and axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("generation")

    path = Path(out) if out is not None else run_dir / PLOT_FILE
    temporary = path.with_name(path.name + ".tmp")
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise UsageError(f"plot file {path} cannot be written: {error.strerror}") from None
    return path
