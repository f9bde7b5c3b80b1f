"""The generation loop: ask -> evaluate -> tell -> update workers -> log, and the run directory it writes.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.jsonl`` (one line
per generation), ``summary.json`` and ``model.safetensors`` (the final weights).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import tomli_w
from safetensors.torch import save_file

from evolm.errors import UsageError
from evolm.evaluators import make_evaluator
from evolm.models import count_parameters
from evolm.strategies import make_strategy
from evolm.worker import Worker

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "model.safetensors")
WALL_CLOCK_FIELDS = ("wall_seconds",)


def default_run_dir(config) -> Path:
    name = config.name or f"{config.strategy.name}-{config.model.name}-seed{config.seed}"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def check_run_dir(path: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, or that holds an earlier run unless ``overwrite``."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"output path {path} exists and is not a folder")
    if path.is_dir() and any((path / name).exists() for name in RUN_FILES) and not overwrite:
        raise UsageError(f"output folder {path} already holds a run; choose another --out or pass --overwrite")


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create the run directory (after :func:`check_run_dir`), clearing an earlier run's files if overwriting."""
    check_run_dir(path, overwrite)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"output folder {path} cannot be created: {error.strerror}") from None
    if overwrite:
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
    return path


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (-1e308 if value < 0 else 1e308)
    return value


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps({k: _json_number(v) for k, v in data.items()}, indent=2) + "\n")
    os.replace(temporary, path)


def _toml_ready(value):
    if isinstance(value, dict):
        return {k: _toml_ready(v) for k, v in value.items() if v is not None}
    return value


def step_generation(strategy, evaluator, generation: int) -> tuple[dict, int]:
    """One generation: ask, evaluate the individuals whose fitness is invalid (DEAP's rule), tell,
    and send the strategy's update to every worker. Returns (strategy metrics, individuals evaluated)."""
    population = strategy.ask(generation)
    invalid = [individual for individual in population if not individual.fitness.valid]
    fitnesses = evaluator.evaluate(invalid, strategy.context_generation(generation))
    for individual, fitness in zip(invalid, fitnesses):
        individual.fitness.values = fitness
    metrics, update = strategy.tell(population, generation)
    evaluator.apply_update(update)
    return metrics, len(invalid)


class Progress:
    """A live progress bar on stderr (tqdm), or nothing when quiet."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="generation", unit="gen", file=sys.stderr, dynamic_ncols=True)

    def update(self, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                best=f"{metrics['best_fitness']:.3f}", mean=f"{metrics['mean_fitness']:.3f}", val=f"{metrics['val_loss']:.3f}"
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(config, out_dir: Path | None = None, overwrite: bool = False, progress: bool = True, log=print) -> dict:
    """Run an evolution described by ``config``; returns the summary (also written to ``summary.json``)."""
    out_dir = Path(out_dir) if out_dir else default_run_dir(config)
    check_run_dir(out_dir, overwrite)
    started = time.perf_counter()
    worker = Worker.from_config(config)  # corpus and model errors surface before anything is written
    prepare_run_dir(out_dir, overwrite)
    (out_dir / "config.toml").write_text(tomli_w.dumps(_toml_ready(config.to_dict())))
    evaluator = make_evaluator(config, worker)
    strategy = make_strategy(config, worker)
    log(
        f"evolm: {config.model.name} with {count_parameters(worker.model):,} parameters "
        f"({worker.space.numel:,} evolving), corpus {worker.corpus.source} "
        f"({len(worker.corpus.train):,} train / {len(worker.corpus.val):,} validation tokens), "
        f"strategy {strategy.name}, population {config.strategy.population_size}, output {out_dir}"
    )
    val_loss_initial = worker.validation_loss()
    report_initial = worker.report(-1)
    evaluations = 0
    metrics: dict = {}
    bar = Progress(config.generations, progress)
    try:
        with (out_dir / "metrics.jsonl").open("w") as metrics_file:
            for generation in range(config.generations):
                step_metrics, evaluated = step_generation(strategy, evaluator, generation)
                evaluations += evaluated
                best_genes = strategy.best_genes()
                metrics = {
                    "generation": generation,
                    "wall_seconds": round(time.perf_counter() - started, 3),
                    "evaluations": evaluations,
                    "forward_tokens": evaluator.forward_tokens,
                    **step_metrics,
                    "val_loss": worker.validation_loss(best_genes),
                    **worker.report(generation, best_genes),
                    # Transport figures (actors alive, bytes sent) are prefixed evaluator_: they vary by backend.
                    **{f"evaluator_{k}": v for k, v in evaluator.stats().items()},
                }
                metrics_file.write(json.dumps({k: _json_number(v) for k, v in metrics.items()}) + "\n")
                metrics_file.flush()
                bar.update(metrics)
                if config.budget_seconds and time.perf_counter() - started >= config.budget_seconds:
                    break
    finally:
        bar.close()
        evaluator.close()

    with worker.applied(strategy.best_genes()) as model:
        save_file({name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    summary = {
        "method": strategy.name,
        "strategy": strategy.name,
        "genome": config.genome.name,
        "model": config.model.name,
        "parameters": count_parameters(worker.model),
        "generations": metrics.get("generation", -1) + 1,
        "evaluations": evaluations,
        "forward_tokens": evaluator.forward_tokens,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "val_loss_initial": val_loss_initial,
        "val_loss_final": metrics.get("val_loss", val_loss_initial),
        "best_fitness": strategy.best_fitness,
        **{f"{k}_initial": v for k, v in report_initial.items()},
        **{f"{k}_final": metrics.get(k) for k in report_initial},
        "run_dir": str(out_dir),
    }
    write_json(out_dir / "summary.json", summary)
    log(
        f"evolm: done in {summary['wall_seconds']:.1f} s; validation loss "
        f"{val_loss_initial:.3f} -> {summary['val_loss_final']:.3f} nats; results in {out_dir}"
    )
    return summary
