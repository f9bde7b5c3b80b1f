"""The generation loop: ask -> evaluate -> tell -> update workers -> log, and the run directory it writes.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.jsonl`` (one line
per generation), ``checkpoint/`` (the last atomic checkpoint, see :mod:`evolm.checkpoint`),
``summary.json``, ``model.safetensors`` (the final weights) and ``fitness.png``.

:func:`resume` continues an interrupted run from its checkpoint: ``metrics.jsonl`` is cut back to
the lines the checkpoint covers and the loop goes on, so the file ends equal (apart from the
wall-clock fields in :data:`WALL_CLOCK_FIELDS`) to an uninterrupted run's.

A run never reads or sets the process-wide ``random`` / ``numpy.random`` / ``torch`` RNG states it
was called with: every draw comes from a generator derived from the run seed and its purpose (see
:mod:`evolm.seeding`), so a checkpoint needs no RNG state and resuming leaves the caller's alone.

Checkpoint cadence (``checkpoint_every``): every N generations, never (0), or auto (-1): the first
generation, then whenever the time since the last checkpoint reaches :data:`AUTO_CHECKPOINT_RATIO`
times what that checkpoint took (at most about 5% of the run spent writing checkpoints, however
large the model), and always the last generation. Each line of ``metrics.jsonl`` says what
checkpointing cost since the line before (``checkpoint_bytes``, ``checkpoint_seconds``; 0 when none
was written): the checkpoint after a generation covers that generation's line, so it is written
after the line and reported on the next one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import tomli_w

from evolm.assembly import worker_from_config
from evolm.checkpoint import (
    CHECKPOINT,
    has_checkpoint,
    load_checkpoint,
    pack_tree,
    save_checkpoint,
    truncate_metrics,
    unpack_tree,
)
from evolm.errors import UsageError
from evolm.evaluators import make_evaluator
from evolm.fitness import with_novelty
from evolm.models import MODEL_NAMES, count_parameters
from evolm.plot import plot_run
from evolm.refine import maybe_refine
from evolm.rundir import (
    check_run_dir,
    default_run_dir,
    json_number,
    peak_rss_mb,
    prepare_run_dir,
    save_model_file,
    toml_ready,
    write_json,
)
from evolm.sampling import load_run_config, sample_from_worker
from evolm.strategies import make_strategy
from evolm.tasks.fitness import PromptScores, finish_prompt_scores, task_summary
from evolm.textstats import printable

# Fields that differ between runs of the same config and seed: the clock, and what the clock decides
# (an auto cadence checkpoints by time; a checkpoint's state.json holds wall_seconds).
WALL_CLOCK_FIELDS = ("wall_seconds", "compute_seconds", "checkpoint_seconds", "checkpoint_bytes")
AUTO_CHECKPOINT_RATIO = 20  # auto cadence: compute at least 20x a checkpoint's cost between checkpoints


def step_generation(strategy, evaluator, generation: int) -> tuple[dict, int]:
    """One generation: ask, evaluate the individuals whose fitness is invalid (DEAP's rule), tell,
    and send the strategy's update to every worker. Returns (strategy metrics, individuals evaluated)."""
    population = strategy.ask(generation)
    invalid = [individual for individual in population if not individual.fitness.valid]
    # Population-level parts are finished here, once every individual's result is in: novelty, and a
    # task's rewards normalised per prompt across the population.
    results = evaluator.evaluate(invalid, strategy.context_generation(generation))
    task_metrics: dict = {}
    novelty = None
    if results and isinstance(results[0], PromptScores):
        fitnesses, task_metrics = finish_prompt_scores(results)
    else:
        fitnesses, novelty = with_novelty(results)
    for individual, fitness in zip(invalid, fitnesses):
        individual.fitness.values = fitness
    metrics, update = strategy.tell(population, generation)
    metrics.update(task_metrics)
    if novelty is not None:
        metrics["novelty_mean"] = float(np.mean(novelty))  # the share in [0, 1], not in nats
    evaluator.apply_update(update)
    # A strategy that scores members itself (pbt) reports how many it scored.
    return metrics, len(invalid) + metrics.pop("extra_evaluations", 0)


class Progress:
    """A live progress bar on stderr (tqdm), or nothing when quiet."""

    def __init__(self, total: int, enabled: bool, initial: int = 0):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="generation", unit="gen", file=sys.stderr, dynamic_ncols=True
            )

    def update(self, metrics: dict) -> None:
        if self.bar is not None:
            transport = {}
            if "evaluator_actors_alive" in metrics:  # Ray: actors alive, individuals/s, bytes sent this generation
                transport = {
                    "actors": metrics["evaluator_actors_alive"],
                    "ind_per_s": f"{metrics['evaluator_individuals_per_second']:.0f}",
                    "sent": f"{metrics['evaluator_bytes_sent']}B",
                }
            self.bar.set_postfix(
                best=f"{metrics['best_fitness']:.3f}",
                mean=f"{metrics['mean_fitness']:.3f}",
                **({"val": f"{metrics['val_loss']:.3f}"} if "val_loss" in metrics else {}),
                **transport,
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(
    config, out_dir: Path | None = None, overwrite: bool = False, progress: bool = True, log=print, worker_factory=None
) -> dict:
    """Run an evolution described by ``config``; returns the summary (also written to ``summary.json``).

    ``worker_factory(config) -> Worker`` builds the worker (model, genome, fitness) instead of
    :func:`evolm.assembly.worker_from_config`; Ray actors call the same factory, so it must be picklable.
    """
    out_dir = Path(out_dir) if out_dir else default_run_dir(config)
    check_run_dir(out_dir, overwrite)
    worker = make_worker(config, worker_factory)  # corpus and model errors surface before anything is written
    evaluator = make_evaluator(config, worker)  # and so does a Ray address that does not answer, or a wrong token
    try:
        prepare_run_dir(out_dir, overwrite)
        (out_dir / "config.toml").write_text(tomli_w.dumps(toml_ready(config.to_dict())))
    except BaseException:
        evaluator.close()
        raise
    return _evolve(config, worker, out_dir, progress, log, evaluator=evaluator)


def make_worker(config, worker_factory=None):
    """The driver's worker; it remembers its factory so Ray actors can build identical ones."""
    factory = worker_factory or worker_from_config
    worker = factory(config)
    worker.factory = factory
    return worker


def resume(run_dir: str | Path, progress: bool = True, log=print, worker_factory=None) -> dict:
    """Continue the interrupted run in ``run_dir`` from its last checkpoint; returns the summary."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)  # a missing folder, or one that is not a run, is refused here
    if (run_dir / "summary.json").exists():
        raise UsageError(f"run folder {run_dir} holds a finished run (summary.json exists); there is nothing to resume")
    checkpoint = load_checkpoint(run_dir) if has_checkpoint(run_dir) else None  # tampered or truncated: refused
    worker = make_worker(config, worker_factory)
    if checkpoint is None:
        log(f"evolm: {run_dir} has no checkpoint yet; starting it again from generation 0")
    return _evolve(config, worker, run_dir, progress, log, checkpoint)


def _checkpoint_payload(worker, strategy, state: dict, metrics_lines: int) -> dict:
    """Model weights, optimiser moments and strategy tensors through safetensors; everything else as JSON.

    The tensors are the live ones, not copies: :func:`save_checkpoint` streams them to the file.
    """
    tensors = {f"model.{name}": tensor for name, tensor in worker.model.state_dict().items()}
    strategy_tensors, strategy_state = pack_tree(strategy.state_dict(), "strategy")
    optimizer = worker.optimizer_state()  # the live state: sync_state would clone every weight
    optimizer_tensors, optimizer_state = pack_tree(optimizer, "optimizer") if optimizer is not None else ({}, None)
    state = {**state, "strategy": strategy_state, "optimizer": optimizer_state}
    return {
        "tensors": {**tensors, **strategy_tensors, **optimizer_tensors},
        "state": state,
        "metrics_lines": metrics_lines,
    }


def _restore(worker, strategy, checkpoint: dict, run_dir: Path) -> dict:
    """Load a checkpoint into the driver's worker and the strategy; returns its JSON state."""
    tensors, state = checkpoint["tensors"], checkpoint["state"]
    model_state = {name[len("model.") :]: t for name, t in tensors.items() if name.startswith("model.")}
    expected = worker.model.state_dict()
    if set(model_state) != set(expected) or any(model_state[k].shape != v.shape for k, v in expected.items()):
        raise UsageError(f"checkpoint in {run_dir} does not match the model in {run_dir / 'config.toml'}")
    worker.model.load_state_dict(model_state)
    optimizer = None if state.get("optimizer") is None else unpack_tree(state["optimizer"], tensors)
    worker.load_sync_state({"tensors": [model_state[name] for name in worker.space.names], "optimizer": optimizer})
    strategy.load_state_dict(unpack_tree(state["strategy"], tensors))
    # A checkpoint from before evolm stopped saving global RNG states has an "rng" entry: it is ignored,
    # since nothing in a run draws from the global RNGs across generations.
    return state


class CheckpointCadence:
    """Whether to checkpoint after a generation: every ``every`` generations, never (0), or auto (-1)."""

    def __init__(self, every: int):
        self.every = every
        self.last_cost: float | None = None  # seconds the last checkpoint took (None: none yet in this process)
        self.last_end = time.perf_counter()

    def due(self, generation: int, last: bool) -> bool:
        if not self.every:
            return False
        if last:
            return True
        if self.every > 0:
            return (generation + 1) % self.every == 0
        if self.last_cost is None:
            return True  # the first one measures what a checkpoint costs on this model and disk
        return time.perf_counter() - self.last_end >= AUTO_CHECKPOINT_RATIO * self.last_cost

    def done(self, seconds: float) -> None:
        self.last_cost, self.last_end = seconds, time.perf_counter()


def _checkpoint_bytes(run_dir: Path) -> int:
    return sum(f.stat().st_size for f in (run_dir / CHECKPOINT).iterdir())


def _last_metrics(path: Path) -> dict:
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _evolve(config, worker, out_dir: Path, progress: bool, log, checkpoint: dict | None = None, evaluator=None) -> dict:
    strategy = make_strategy(config, worker)
    metrics_path = out_dir / "metrics.jsonl"
    if checkpoint is not None:
        state = _restore(worker, strategy, checkpoint, out_dir)  # before the evaluator: Ray actors copy the driver
        dropped = truncate_metrics(metrics_path, checkpoint["metrics_lines"])
        first, evaluations, tokens_before = state["next_generation"], state["evaluations"], state["forward_tokens"]
        val_loss_initial, report_initial = state["val_loss_initial"], state["report_initial"]
        started = time.perf_counter() - state["wall_seconds"]
        measured = state.get("measure_seconds", 0.0)
        metrics: dict = _last_metrics(metrics_path)
        log(
            f"evolm: resuming {out_dir} at generation {first} of {config.generations} "
            f"(dropped {dropped} metrics lines written after the checkpoint)"
        )
    else:
        first, evaluations, tokens_before, metrics = 0, 0, 0, {}
        val_loss_initial = worker.validation_loss()
        report_initial = worker.report(-1)
        started, measured = time.perf_counter(), 0.0  # the clock starts once the run is set up, as a baseline's
    # Made after _restore; Ray actors made earlier also follow the driver (they compare checksums).
    evaluator = evaluator or make_evaluator(config, worker)
    board = None
    if config.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        board = SummaryWriter(str(out_dir / "tensorboard"))
    log(
        f"evolm: {config.model.name} with {count_parameters(worker.model):,} parameters "
        f"({worker.space.numel:,} evolving), corpus {worker.corpus.source} "
        f"({len(worker.corpus.train):,} train / {len(worker.corpus.val):,} validation tokens), "
        f"strategy {strategy.name}, population {config.strategy.population_size}, output {out_dir}"
    )
    if checkpoint is None and hasattr(worker.fitness, "examples"):  # a task: show what the reward will move
        log(f"evolm: task {config.task.name or 'reward'}, held-out reward {report_initial['reward']:.3f}; before:")
        log(worker.fitness.examples(worker.model))
    cadence = CheckpointCadence(config.checkpoint_every)
    checkpoint_cost = {"checkpoint_bytes": 0, "checkpoint_seconds": 0.0}  # since the previous line
    last_checkpoint = checkpoint_cost  # the run's final checkpoint, for summary.json
    bar = Progress(config.generations, progress, initial=first)
    try:
        with metrics_path.open("a" if checkpoint is not None else "w") as metrics_file:
            for generation in range(first, config.generations):
                step_metrics, evaluated = step_generation(strategy, evaluator, generation)
                step_metrics.update(maybe_refine(config, strategy, worker, evaluator, generation))
                # Gradient work (refinement, pbt training) counts too: budgets compare total forward tokens.
                tokens_before += step_metrics.pop("extra_forward_tokens", 0)
                evaluations += evaluated
                best_genes = strategy.best_genes()
                # Measuring (validation, report) and checkpoints are not the method's work: a wall-clock
                # budget counts compute_seconds, the wall time without them (baselines count the same way).
                wall = time.perf_counter() - started
                forward_tokens = tokens_before + evaluator.forward_tokens
                out_of_time = (bool(config.budget_seconds) and wall - measured >= config.budget_seconds) or (
                    bool(config.budget_tokens) and forward_tokens >= config.budget_tokens
                )
                last = out_of_time or generation + 1 == config.generations
                figures = {}
                if last or generation == 0 or (generation + 1) % config.report_every == 0:
                    figures = {"val_loss": worker.validation_loss(best_genes), **worker.report(generation, best_genes)}
                    measured += time.perf_counter() - started - wall
                metrics = {
                    "generation": generation,
                    "wall_seconds": round(wall, 3),
                    "compute_seconds": round(wall - measured, 3),
                    "evaluations": evaluations,
                    "forward_tokens": forward_tokens,
                    **step_metrics,
                    **figures,
                    # Transport figures (actors alive, bytes sent) are prefixed evaluator_: they vary by backend.
                    **{f"evaluator_{k}": v for k, v in evaluator.stats().items()},
                    **checkpoint_cost,
                }
                metrics_file.write(json.dumps({k: json_number(v) for k, v in metrics.items()}) + "\n")
                metrics_file.flush()
                checkpoint_cost = {"checkpoint_bytes": 0, "checkpoint_seconds": 0.0}
                if cadence.due(generation, last):
                    checkpoint_started = time.perf_counter()
                    os.fsync(metrics_file.fileno())  # the lines the checkpoint covers are on disk first
                    counters = {
                        "next_generation": generation + 1,
                        "evaluations": evaluations,
                        "forward_tokens": metrics["forward_tokens"],
                        "wall_seconds": metrics["wall_seconds"],
                        "measure_seconds": measured,
                        "val_loss_initial": val_loss_initial,
                        "report_initial": report_initial,
                    }
                    save_checkpoint(out_dir, _checkpoint_payload(worker, strategy, counters, generation + 1))
                    seconds = time.perf_counter() - checkpoint_started
                    cadence.done(seconds)
                    measured += seconds
                    checkpoint_cost = {
                        "checkpoint_bytes": _checkpoint_bytes(out_dir),
                        "checkpoint_seconds": round(seconds, 3),
                    }
                    last_checkpoint = checkpoint_cost
                bar.update(metrics)
                if board is not None:
                    for key, value in metrics.items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "generation":
                            board.add_scalar(key, value, generation)
                if out_of_time:
                    break
    finally:
        bar.close()
        evaluator.close()
        if board is not None:
            board.close()

    with worker.applied(strategy.best_genes()) as model:
        save_model_file(model, out_dir / "model.safetensors")
    worker.release_search_state()  # saved: the snapshot and optimiser moments are not needed any more
    summary = {
        "method": strategy.name,
        "strategy": strategy.name,
        "genome": config.genome.name,
        "model": config.model.name,
        "parameters": count_parameters(worker.model),
        "generations": metrics.get("generation", -1) + 1,
        "evaluations": evaluations,
        "forward_tokens": metrics.get("forward_tokens", tokens_before),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "compute_seconds": metrics.get("compute_seconds", 0.0),
        "val_loss_initial": val_loss_initial,
        "val_loss_final": metrics.get("val_loss", val_loss_initial),
        "best_fitness": strategy.best_fitness,
        **{f"last_{k}": v for k, v in last_checkpoint.items()},
        **{f"{k}_initial": v for k, v in report_initial.items()},
        **{f"{k}_final": metrics.get(k) for k in report_initial},
        **task_summary(config, metrics),
        "peak_rss_mb": peak_rss_mb(),
        "run_dir": str(out_dir),
    }
    write_json(out_dir / "summary.json", summary)
    _finish(out_dir, summary, config, log, worker, strategy.best_genes())
    return summary


def _finish(out_dir: Path, summary: dict, config, log, worker, best_genes) -> None:
    """The end of every run: ``fitness.png``, a short summary and a sample of the final model."""
    try:
        plot = str(plot_run(out_dir))
    except (UsageError, OSError) as error:  # a plot must never cost a finished run
        plot = f"(no plot: {error})"
    log(
        f"evolm: done in {summary['wall_seconds']:.1f} s; {summary['generations']} generations, "
        f"{summary['evaluations']:,} evaluations; validation loss "
        f"{summary['val_loss_initial']:.3f} -> {summary['val_loss_final']:.3f} nats; "
        f"best fitness {summary['best_fitness']:.3f}; results in {out_dir}; plot {plot}"
    )
    # The driver's worker with the final genes applied holds exactly the saved weights: sampling
    # from it reads no file and builds no second model (a model-sized copy at the end of every run).
    unit = "bytes" if config.model.name in MODEL_NAMES else "tokens"  # hf:PATH or an API module: its own tokenizer
    if hasattr(worker.fitness, "examples"):  # a task: the same held-out prompts as before the run
        with worker.applied(best_genes) as model:
            log(f"evolm: held-out reward {summary['reward_initial']:.3f} -> {summary['reward_final']:.3f}; after:")
            log(worker.fitness.examples(model))
        return
    sample = sample_from_worker(worker, best_genes, tokens=200, temperature=0.8, seed=config.seed)
    if sample is not None:  # None: a fitness-function run without text has nothing to write with
        log(f"evolm: sample (200 {unit}, temperature 0.8):\n" + printable(sample))
