"""Calibrate the arithmetic task: which share of carry problems in the training text, and how many adam steps.

A start point for the arithmetic task should be right on held-out carry problems *some* of the time
(5-30% exact answers), and further plain training on the corpus should not jump it past 80% within a
few hundred steps: a start point on a cliff is a bad benchmark, since a little more cross-entropy
training would beat any reward method (issue 15 saw exactly that with every sum in the text).

For each candidate carry share the script sets ``evolm.tasks.arithmetic.CARRY_SHARE`` and trains the
default GPT (``build_config`` defaults: model context 64, batch 32, lr 3e-3, seed 0, one thread) on
the task's generated corpus with ``evolm.baselines.run_adam`` and ``task.name = arithmetic``, which is
what ``evolm train --task arithmetic --steps N`` runs. Every :data:`LOG_EVERY` steps the run logs the
task's report: exact answers with greedy decoding (``model.generate`` at temperature 0; every prompt
is 6 bytes, so no padding) on the task's 1,000 held-out carry problems. A run's weights after N steps
do not depend on how many steps follow (the batches come from one seeded generator, and logging draws
nothing), so one long run per share gives every start point by step count. The last step's weights
are also scored on 1,000 no-carry problems from the corpus (has the model learnt the class it was
shown?) and with partial credit.

The recommended start point (:func:`recommend`) is, among the logged points with exact answers in
[5%, 30%], no logged point above 80% within :data:`CLIFF_STEPS` more steps, and a validation loss
within 2% of the run's lowest (the model has learnt its training text, so it is not on the steep
part of plain training), the one whose held-out figure rises least over the next :data:`CLIFF_STEPS`
steps. It is then made again as ``evolm train --steps N`` makes it, a separate run of N steps, and
scored in full; ``same_as_long_run`` checks that it matches the long run's figure.

Writes ``benchmarks/results/arithmetic_calibration.json`` and prints the tables and the recommendation.

    python benchmarks/arithmetic_calibration.py                          # the full grid
    python benchmarks/arithmetic_calibration.py --shares 0.02 --steps 100  # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result

from evolm.baselines import run_adam
from evolm.config import build_config
from evolm.data import ByteTokenizer
from evolm.models.build import build_initial_model
from evolm.tasks import arithmetic
from evolm.tasks.arithmetic import arithmetic_task, exact_reward, partial_reward, problem_prompt, split_problems

SHARES = (0.0, 0.02, 0.05)
STEPS = 3000  # the longest start point measured
LOG_EVERY = 125
CLIFF_STEPS = 500  # "a few hundred more steps": no logged point this far past the start may be above 80%
TARGET = (0.05, 0.30)
CLIFF = 0.80
LEARNT_WITHIN = 0.02
NO_CARRY_SAMPLE = 1000


@torch.no_grad()
def greedy_completions(model, prompts: list[str]) -> list[str]:
    """Greedy completions of equal-length prompts, cut at the newline."""
    tokenizer = ByteTokenizer()
    tokens = torch.stack([tokenizer.encode(prompt) for prompt in prompts])
    new = model.generate(tokens, arithmetic.NEW_TOKENS, temperature=0.0)
    return [tokenizer.decode(row).split("\n", 1)[0] for row in new.tolist()]


def score(run_dir: str, prompts: list[str]) -> tuple[float, float]:
    """Exact answers and partial credit of a run's final weights on ``prompts``."""
    config = build_config(None, [("model.init", run_dir)])
    model = build_initial_model(config.model, config.seed).eval()
    completions = greedy_completions(model, prompts)
    exact, partial = exact_reward(prompts, completions), partial_reward(prompts, completions)
    return sum(exact) / len(exact), sum(partial) / len(partial)


def train(share: float, steps: int, out: Path) -> tuple[list[dict], dict]:
    """An adam run on the task with ``share`` of the carry problems in its text: (logged points, summary)."""
    arithmetic.CARRY_SHARE = share
    config = build_config(None, [("task.name", "arithmetic"), ("threads", 1)])
    summary = run_adam(config, out, steps=steps, log_every=LOG_EVERY, log=lambda _message: None)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    points = [{"steps": 0, "val_loss": summary["val_loss_initial"], "heldout_carry_exact": summary["reward_initial"]}]
    points += [
        {"steps": line["generation"] + 1, "val_loss": line["val_loss"], "heldout_carry_exact": line["reward"]}
        for line in lines
    ]
    return points, summary


def no_carry_prompts(seed: int) -> list[str]:
    """A seeded sample of the no-carry problems (all of them are in the training text)."""
    problems = split_problems(seed, 0.0)["no_carry"]
    pick = torch.randperm(len(problems), generator=torch.Generator().manual_seed(seed))[:NO_CARRY_SAMPLE]
    return [problem_prompt(*problems[int(i)]) for i in pick]


def scored_run(share: float, steps: int, seed: int, work: Path) -> tuple[list[dict], dict]:
    """Train, then score the last weights: held-out carry exact and partial, no-carry exact."""
    task = arithmetic_task(seed, share)
    started = time.perf_counter()
    points, summary = train(share, steps, work / f"run-{share:g}-{steps}")
    seconds = time.perf_counter() - started
    heldout_exact, heldout_partial = score(summary["run_dir"], task.heldout_prompts)
    no_carry_exact, _ = score(summary["run_dir"], no_carry_prompts(seed))
    rows = [{"carry_share": share, "corpus_carry_problems": task.info["corpus_carry_problems"], **p} for p in points]
    final = {
        "carry_share": share,
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "heldout_carry_exact": heldout_exact,
        "heldout_carry_partial": round(heldout_partial, 4),
        "no_carry_exact": no_carry_exact,
        "val_loss": summary["val_loss_final"],
    }
    print(f"share {share:g}, {steps} steps: {final}", flush=True)
    return rows, final


def recommend(rows: list[dict]) -> dict | None:
    """The start point whose held-out carry exact rises least over the next CLIFF_STEPS, among those that are
    in the target band, never above CLIFF within CLIFF_STEPS more steps, and have learnt their training
    text (validation loss within LEARNT_WITHIN of the run's lowest: not still on the steep part)."""
    candidates = []
    for row in rows:
        curve = [other for other in rows if other["carry_share"] == row["carry_share"]]
        lowest_loss = min(other["val_loss"] for other in curve)
        later = [other for other in curve if row["steps"] < other["steps"] <= row["steps"] + CLIFF_STEPS]
        if (
            TARGET[0] <= row["heldout_carry_exact"] <= TARGET[1]
            and row["val_loss"] <= lowest_loss * (1 + LEARNT_WITHIN)
            and later
            and later[-1]["steps"] == row["steps"] + CLIFF_STEPS
            and all(other["heldout_carry_exact"] <= CLIFF for other in later)
        ):
            rise = max(other["heldout_carry_exact"] for other in later) - row["heldout_carry_exact"]
            candidates.append((rise, row["steps"], {**row, "rise_within_cliff_steps": rise}))
    return min(candidates, key=lambda c: c[:2])[2] if candidates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", default=",".join(map(str, SHARES)), help="carry shares, comma-separated")
    parser.add_argument("--steps", type=int, default=STEPS, help="adam steps of each share's run")
    parser.add_argument("--seed", type=int, default=0, help="task seed (the model seed is the config default, 0)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results JSON alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shares = [float(s) for s in args.shares.split(",")]
    started = time.perf_counter()
    rows, finals = [], []
    with tempfile.TemporaryDirectory() as work:
        for share in shares:
            curve, final = scored_run(share, args.steps, args.seed, Path(work))
            rows += curve
            finals.append(final)
        chosen = recommend(rows)
        if chosen is not None:  # the start point as `evolm train --steps N` makes it: a run of N steps
            _, start = scored_run(chosen["carry_share"], chosen["steps"], args.seed, Path(work))
            start["same_as_long_run"] = start["heldout_carry_exact"] == chosen["heldout_carry_exact"]
            finals.append(start)
    by_step: dict[int, dict[float, dict]] = {}
    for row in rows:
        by_step.setdefault(row["steps"], {})[row["carry_share"]] = row
    headers = ["steps", *(f"share {share:g}: exact / val loss" for share in shares)]
    print_table(
        headers,
        [
            [
                steps,
                *(f"{r['heldout_carry_exact']:.3f} / {r['val_loss']:.3f}" if (r := got.get(s)) else "" for s in shares),
            ]
            for steps, got in sorted(by_step.items())
        ],
    )
    print_table(
        ["share", "steps", "s", "held-out carry exact", "partial", "no-carry exact"],
        [
            [
                f["carry_share"],
                f["steps"],
                f["train_seconds"],
                f["heldout_carry_exact"],
                f["heldout_carry_partial"],
                f["no_carry_exact"],
            ]
            for f in finals
        ],
    )
    if chosen is None:
        print("no (share, steps) in the target band without a cliff: widen the grid")
    else:
        print(f"recommended: CARRY_SHARE = {chosen['carry_share']:g}, START_STEPS = {chosen['steps']}")
    if not args.no_write:
        path = write_result(
            "arithmetic_calibration",
            {
                "curves": rows,
                "scored": finals,
                "recommended": chosen,
                "target_band": TARGET,
                "cliff": {"exact_above": CLIFF, "within_steps": CLIFF_STEPS},
                "learnt_within": LEARNT_WITHIN,
                "task_seed": args.seed,
                "heldout_problems": arithmetic.HELDOUT_PROBLEMS,
                "total_seconds": round(time.perf_counter() - started, 1),
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
