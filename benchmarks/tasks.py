"""Every shipped task, every method: fine-tune a trained start on a reward, tuned, judged on held-out prompts.

For each task (self-feedback, arithmetic, python-lines):

1. the start point: ``evolm train --task NAME --steps N`` (Adam on the task's own text, or the embedded
   corpus for self-feedback), by step count so that it repeats on any machine: arithmetic's recommended
   :data:`evolm.tasks.arithmetic.START_STEPS`, :data:`DEFAULT_START_STEPS` for the others;
2. ``evolm compare --task NAME --init START`` over the methods (:mod:`evolm.compare_tasks`: the same
   three-value sweep per method on a tuning seed, then ``--seeds`` fresh seeds with the winners, one
   judge for all), one thread per run.

Two tasks run at once by default (``--parallel 2``: each run uses one thread, so a 2-core machine is
full). Writes ``benchmarks/results/tasks.json`` (per task: rows, sweep and winners, initial reward, the
start point's steps) and ``tasks.md`` (who won each task, by how much, with how much drift), and prints
the table. Every run's folder stays under ``--work`` (a new temporary folder unless given; a start
point already there is reused).

    python benchmarks/tasks.py [--tasks arithmetic,python-lines,self-feedback] [--methods es,grpo,...]
        [--budget-seconds 20 | --budget-tokens N] [--seeds 3] [--no-tune] [--parallel 2]
        [--start-steps N] [--work DIR] [--results FILE.json] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

from evolm.compare_tasks import TASK_METHODS, TUNING_SEED, budget_warning, verdict  # noqa: E402
from evolm.tasks import arithmetic  # noqa: E402

SHIPPED_TASKS = ("self-feedback", "arithmetic", "python-lines")
# Adam steps of each task's start point (batch 32 x 64 bytes, lr 3e-3, the default GPT, seed 0): the
# arithmetic module's calibrated step count; for the others a model that writes plausible lines but
# has room left on the reward (the validation loss still falls past it).
DEFAULT_START_STEPS = 800
START_STEPS = {"arithmetic": arithmetic.START_STEPS, "python-lines": DEFAULT_START_STEPS}
# Each task's own settings, for every method (a gradient baseline trains on the reward or the text whatever
# task.fitness says): arithmetic's evolution maximises the log-probability of the right answer, the dense
# fitness (greedy exact match gave 32 individuals a handful of distinct scores); self-feedback reports
# 128 held-out windows (each report writes and scores them all, every generation of an evolution run).
TASK_SETTINGS = {"arithmetic": ["task.fitness=logprob"], "self-feedback": ["task.heldout=128"]}


def start_steps(task: str, override: int | None) -> int:
    return override or START_STEPS.get(task, DEFAULT_START_STEPS)


def _evolm(arguments: list[str], log_path: Path) -> str | None:
    """Run ``python -m evolm ARGUMENTS`` with its output in ``log_path``; None, or the error's last line."""
    with log_path.open("w") as log_file:
        log_file.write("$ evolm " + shlex.join(arguments) + "\n")
        log_file.flush()
        result = subprocess.run([sys.executable, "-m", "evolm", *arguments], stdout=log_file, stderr=subprocess.STDOUT)
    if result.returncode == 0:
        return None
    lines = log_path.read_text().strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def run_task(task: str, args, work: Path) -> dict:
    """Start point, then the comparison, for one task; its entry of tasks.json."""
    folder = work / task
    folder.mkdir(parents=True, exist_ok=True)
    steps = start_steps(task, args.start_steps)
    assignments = ["threads=1", *TASK_SETTINGS.get(task, []), *args.set]
    settings = [item for assignment in assignments for item in ("--set", assignment)]
    start = folder / "start"
    entry: dict = {"start_steps": steps, "start": str(start)}
    began = time.perf_counter()
    if not (start / "model.safetensors").exists():
        print(f"[{task}] start point: adam, {steps} steps ...", flush=True)
        failure = _evolm(
            ["train", "--task", task, "--steps", str(steps), "--out", str(start), *settings], folder / "train.log"
        )
        if failure:
            return {**entry, "error": f"start point: {failure}"}
    else:
        print(f"[{task}] start point: reusing {start}", flush=True)
    entry["start_val_loss"] = json.loads((start / "summary.json").read_text()).get("val_loss_final")
    budget = ["--budget-tokens", str(args.budget_tokens)] if args.budget_tokens else []
    budget += ["--budget-seconds", str(args.budget_seconds)] if args.budget_seconds else []
    arguments = ["compare", "--task", task, "--init", str(start), "--methods", args.methods]
    arguments += ["--seeds", str(args.seeds), *budget, "--out", str(folder / "compare"), *settings]
    arguments += ["--no-tune"] if args.no_tune else []
    print(f"[{task}] compare: {args.methods} ...", flush=True)
    failure = _evolm(arguments, folder / "compare.log")
    if failure:
        return {**entry, "error": f"compare: {failure}"}
    document = json.loads((folder / "compare" / "compare.json").read_text())
    print(f"[{task}] done in {time.perf_counter() - began:.0f} s", flush=True)
    return {
        **entry,
        "reward_initial": document["initial"]["reward"],
        "distinct_2_initial": document["initial"]["distinct_2"],
        "rows": document["rows"],
        "sweep": document["sweep"],
        "winners": document["winners"],
        "verdict": verdict(document["rows"]),
        "budget_warning": budget_warning(document),
        "seconds": round(time.perf_counter() - began, 1),
    }


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    """tasks.md: one table over tasks and methods, then each task's verdict."""
    lines = [
        f"Budget {results['budget']} per run, seeds {', '.join(map(str, results['seeds']))}, "
        + ("each method's value of a three-value sweep on a tuning seed" if results["tuned"] else "not tuned")
        + "; held-out reward (greedy) and KL drift from the start (nats per position of held-out text), "
        "mean ± std over seeds.",
        "",
        "| task | start | method | tuned (maximised) | held-out reward | KL from start | forward tokens | compute s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, entry in results["tasks"].items():
        if "error" in entry:
            lines.append(
                f"| {task} | {entry['start_steps']} steps | failed: {entry['error'].replace('|', '/')} | | | | | |"
            )
            continue
        start = f"{entry['start_steps']} steps, reward {_number(entry['reward_initial'])}"
        for row in entry["rows"]:
            if "error" in row:
                lines.append(
                    f"| {task} | {start} | {row['method']} | failed: {row['error'].replace('|', '/')} | | | | |"
                )
                continue
            lines.append(
                f"| {task} | {start} | {row['method']} | {row['knob'].rsplit('.', 1)[-1]} {row['value']:g} "
                f"({row.get('trained_on') or '?'}) "
                f"| {_number(row['reward'])} ± {_number(row['reward_std'])} "
                f"| {_number(row['kl_from_initial'], 4)} ± {_number(row['kl_std'], 4)} "
                f"| {row['forward_tokens']:,.0f} | {row.get('compute_seconds', row['wall_seconds']):.1f} |"
            )
    lines.append("")
    for task, entry in results["tasks"].items():
        warning = entry.get("budget_warning")
        lines.append(f"- **{task}**: {entry.get('verdict') or entry.get('error')}" + (f" {warning}" if warning else ""))
    return "\n".join(lines) + "\n"


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(SHIPPED_TASKS), help="comma-separated shipped tasks")
    parser.add_argument("--methods", default=",".join(TASK_METHODS), help="comma-separated (evolm compare's)")
    parser.add_argument(
        "--budget-seconds", type=float, help="wall seconds per run (default 20 without --budget-tokens)"
    )
    parser.add_argument("--budget-tokens", type=int, help="forward tokens per run instead")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds per method (default 3)")
    parser.add_argument("--no-tune", action="store_true", help="skip the sweep: each method's middle value")
    parser.add_argument("--parallel", type=int, default=2, help="tasks run at once, one thread each (default 2)")
    parser.add_argument("--start-steps", type=int, help="adam steps of every start point (default: per task)")
    parser.add_argument("--work", help="folder of every run (default: a new temporary folder)")
    parser.add_argument("--results", default=str(RESULTS / "tasks.json"), help="JSON to write (and .md beside it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all")
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks.split(",") if t not in SHIPPED_TASKS]
    if unknown:
        parser.error(f"--tasks: unknown task {unknown[0]!r} (choose from {', '.join(SHIPPED_TASKS)})")
    unknown = [m for m in args.methods.split(",") if m not in TASK_METHODS]
    if unknown:
        parser.error(f"--methods: unknown method {unknown[0]!r} (choose from {', '.join(TASK_METHODS)})")
    if not args.budget_tokens and not args.budget_seconds:
        args.budget_seconds = 20.0
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="evolm-tasks-"))
    print(f"runs under {work}", flush=True)
    tasks = args.tasks.split(",")
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:  # threads that wait on processes
        entries = dict(zip(tasks, pool.map(lambda task: run_task(task, args, work), tasks)))
    limits = [f"{args.budget_seconds:g} s"] if args.budget_seconds else []
    limits += [f"{args.budget_tokens:,} forward tokens"] if args.budget_tokens else []
    budget = " or ".join(limits)  # whichever comes first
    results = {
        "budget": budget,
        "budget_seconds": args.budget_seconds,
        "budget_tokens": args.budget_tokens,
        "seeds": [TUNING_SEED + 1 + index for index in range(args.seeds)],  # as evolm compare numbers them
        "tuned": not args.no_tune,
        "methods": args.methods.split(","),
        "parallel": args.parallel,
        "work": str(work),
        "tasks": entries,
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    path.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
