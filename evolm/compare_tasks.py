"""``evolm compare --task NAME`` (or ``--reward module:function``): every method fine-tunes the same start
on a task's reward, each tuned on the same small budget, then judged the same way on fresh seeds.

1. **Tuning** (the same sweep budget for ES and the RL baselines, as in Qiu et al. 2025, arXiv
   2509.24372). Every method gets three values of its most sensitive setting (:data:`SWEEPS`: es's and
   hybrid's step, ga's and cmaes's sigma, the gradient methods' learning rate), each run once on
   :data:`TUNING_SEED` with the comparison's budget; the winner has the highest held-out reward (ties: the lower KL drift, then the
   earlier value). ``--no-tune`` uses each sweep's middle value instead.
2. **Comparison.** Each method runs its winner on ``--seeds K`` fresh seeds (1..K), each (method, seed)
   in its own process (:func:`evolm.compare.run_in_child`), from the same ``--init`` weights, on the same
   wall-clock or forward-token budget.
3. **One judge** (:class:`TaskJudge`): the task's :class:`~evolm.tasks.runtime.TaskRuntime` rebuilt on
   the start weights reports every run's final ``model.safetensors``: held-out reward with greedy
   decoding, KL from the start on held-out corpus text, distinct-2 of the held-out completions.

The held-out prompts pick the sweep's winner as they score the comparison (on the tuning seed): the same
for every method, but a selection on the test prompts, slightly optimistic for all methods alike.
Writes ``compare.json`` (rows, sweep, winners, budget, machine, command), ``compare.md`` and
``compare.png`` (held-out reward against wall time and against forward tokens, every seed).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

from evolm.assembly import worker_from_config
from evolm.baselines import BASELINES
from evolm.compare import (
    COMMON,
    EVOLUTION,
    invoking_command,
    json_ready,
    machine,
    mean_or_nan,
    metrics_curve,
    parse_methods,
    plot_comparison,
    run_in_child,
    std_or_zero,
)
from evolm.config import build_config
from evolm.errors import UsageError
from evolm.sampling import load_run_model
from evolm.tasks.fitness import uses_task

EVOLUTION_METHODS = ("es", "ga", "cmaes", "hybrid")
POLICY_GRADIENT = ("grpo", "rloo")
# adam: more plain training on the task's text, the honest "just train longer" reference.
TASK_METHODS = (*EVOLUTION_METHODS, *POLICY_GRADIENT, "reinforce", "mezo", "adam")
TUNING_SEED = 0  # the sweep's seed; the comparison runs on seeds 1..K

# A task run's es (and hybrid) perturbs a trained model by sigma ES_SIGMA and steps with its default Adam;
# the sweep varies the step. Measured on arithmetic from the 1,625-step start (held-out 0.240, 40 s,
# logprob fitness, one seed): Adam lr 3e-3 -> 0.616 (KL 0.08), lr 1e-2 -> 0.458 (KL 1.5); a plain SGD
# step of lr 2.5e-3 diverged (0.001). Qiu et al.'s small SGD step was not measured against these.
ES_SIGMA = 3e-3


def _around(default: float) -> tuple[float, ...]:
    """A third of the default, the default and three times it (2 significant digits)."""
    return tuple(float(f"{value:.2g}") for value in (default / 3, default, default * 3))


def _default_learning_rate(method: str) -> float:
    return float(inspect.signature(BASELINES[method]).parameters["learning_rate"].default)


# method -> (the setting the sweep varies, its three values; the middle one is the --no-tune default).
# A dotted setting is a config field, a plain one a baseline's option. es and hybrid: Adam's step around
# 3e-3 at sigma ES_SIGMA; ga's mutation scale around 3e-3 (a trained model moves little per step); cmaes
# around its own default 0.3 (a step size on LayerNorm gains and biases, not on all weights). The
# gradient methods: each baseline's own default learning rate, a third of it and three times it.
SWEEPS: dict[str, tuple[str, tuple[float, ...]]] = {
    "es": ("strategy.learning_rate", (1e-3, 3e-3, 1e-2)),
    "hybrid": ("strategy.learning_rate", (1e-3, 3e-3, 1e-2)),
    "ga": ("strategy.sigma", (1e-3, 3e-3, 1e-2)),
    "cmaes": ("strategy.sigma", (0.03, 0.1, 0.3)),
    **{
        method: ("learning_rate", _around(_default_learning_rate(method)))
        for method in TASK_METHODS
        if method in BASELINES
    },
}
COLUMNS = {
    "reward": "held-out reward of the final weights, greedy decoding (the task's report, one judge for all), mean "
    "over seeds; reward_std its std; rewards the seeds' values",
    "train_reward": "the last logged training reward (evolution: the population's mean on that generation's prompts; "
    "grpo, rloo: the mean of the sampled completions); null where the method trains on something else",
    "kl_from_initial": "mean KL(final || start) per position of held-out corpus text, nats (off-task drift)",
    "val_loss_final": "validation loss of the final weights on the task's corpus (nats per token)",
    "distinct_2": "distinct bigrams / bigrams of the held-out completions",
    "forward_tokens": "tokens through forward passes for fitness or training (reports excluded), mean over seeds",
    "wall_seconds": "the run's wall seconds, mean over seeds",
    "compute_seconds": "wall seconds without measuring (validation, reports, checkpoints): the clock a wall-clock budget counts",
    "peak_rss_mb": "peak resident memory of the run's process, max over seeds",
}


def parse_task_methods(text: str | None) -> list[str]:
    """``--methods`` of a task comparison (default: every task method)."""
    return parse_methods(text if text is not None else ",".join(TASK_METHODS), TASK_METHODS, task=True)


def method_settings(method: str, value: float, config) -> dict:
    """What a method runs with in a task comparison, given its sweep value (see :data:`SWEEPS`)."""
    knob = SWEEPS[method][0]
    settings: dict = {knob: value}
    if method in ("es", "hybrid"):
        settings["strategy.sigma"] = ES_SIGMA
    return settings


class TaskJudge:
    """The task's runtime on the start weights: every method's final weights are reported by it.

    Built as an evolution run of the comparison's settings builds it (:func:`evolm.assembly.worker_from_config`),
    so the held-out prompts, the corpus text of the KL drift and the frozen start are every run's."""

    def __init__(self, overrides, seed: int):
        worker = worker_from_config(build_config(overrides=[*COMMON, *overrides, ("seed", seed)]))
        self.runtime = worker.fitness.runtime
        self.device = worker.device
        self.initial = self.runtime.report(worker.model)  # where every method starts

    def __call__(self, run_dir: Path) -> dict:
        return self.runtime.report(load_run_model(run_dir).to(self.device))


class _Runner:
    """Runs (method, seed, settings) in a child process and judges the result; caches one judge per start."""

    def __init__(self, overrides, budget_seconds, budget_tokens, log):
        self.overrides = list(overrides)
        config = build_config(overrides=[*COMMON, *self.overrides])
        # A seeded initialisation differs per seed; trained (or Hugging Face) weights are one start for all.
        self.start_per_seed = not (config.model.init or config.model.name.startswith("hf:"))
        self.budget = {"budget_seconds": budget_seconds, "budget_tokens": budget_tokens}
        self.judges: dict = {}
        self.log = log

    def judge(self, seed: int) -> TaskJudge:
        key = seed if self.start_per_seed else None
        if key not in self.judges:
            self.judges[key] = TaskJudge(self.overrides, seed)
        return self.judges[key]

    def __call__(self, method: str, seed: int, run_dir: Path, settings: dict) -> tuple[dict | None, str | None]:
        spec = {"overrides": [list(p) for p in self.overrides], **self.budget, "settings": settings}
        summary, failure = run_in_child(method, seed, run_dir, spec)
        if summary is not None:
            try:
                summary["judged"] = self.judge(seed)(run_dir)
            except UsageError as error:
                summary, failure = None, f"judging the final weights: {error}"
        if failure is not None:
            self.log(f"evolm compare: {method} seed {seed} failed: {failure}")
        return summary, failure


def _rank_key(entry: dict) -> tuple:
    """Sort key of a sweep entry, best first: higher reward, then lower drift (failures and NaN last)."""
    reward, kl = entry.get("reward"), entry.get("kl_from_initial")
    score = reward if reward is not None and math.isfinite(reward) else -math.inf
    return (-score, kl if kl is not None and math.isfinite(kl) else math.inf)


def tune(method: str, runner: _Runner, out_dir: Path, config) -> tuple[list[dict], dict | None]:
    """The method's sweep on the tuning seed: every value with its judged figures, and the winner."""
    knob, values = SWEEPS[method]
    entries = []
    for value in values:
        runner.log(f"evolm compare: tuning {method} {knob} = {value:g} (seed {TUNING_SEED}) ...")
        summary, failure = runner(
            method, TUNING_SEED, out_dir / "sweep" / f"{method}-{value:g}", method_settings(method, value, config)
        )
        entry: dict = {"value": value}
        if summary is None:
            entry["error"] = failure
        else:
            entry.update(reward=summary["judged"]["reward"], kl_from_initial=summary["judged"]["kl_from_initial"])
        entries.append(entry)
    ranked = sorted((e for e in entries if "error" not in e), key=_rank_key)
    if not ranked:
        return entries, None
    return entries, {"knob": knob, "value": ranked[0]["value"], "reward": ranked[0]["reward"]}


def _row(method: str, knob: str, value: float, summaries: list[dict], seeds: list[int], curves: list) -> dict:
    judged = {key: [s["judged"][key] for s in summaries] for key in ("reward", "kl_from_initial", "distinct_2")}
    losses = [float(s["val_loss_final"]) for s in summaries]
    trained = [curve[-1]["train_reward"] for curve in curves if curve]
    return {
        "method": method,
        "knob": knob,
        "value": value,
        "trained_on": summaries[0].get("task_fitness"),  # what the method maximised (reward, logprob, likelihood...)
        "reward": mean_or_nan(judged["reward"]),
        "reward_std": std_or_zero(judged["reward"]),
        "rewards": judged["reward"],
        "train_reward": mean_or_nan(trained) if trained else None,
        "kl_from_initial": mean_or_nan(judged["kl_from_initial"]),
        "kl_std": std_or_zero(judged["kl_from_initial"]),
        "val_loss_final": mean_or_nan(losses),
        "val_loss_std": std_or_zero(losses),
        "distinct_2": mean_or_nan(judged["distinct_2"]),
        "forward_tokens": mean_or_nan([float(s["forward_tokens"]) for s in summaries]),
        "wall_seconds": mean_or_nan([float(s["wall_seconds"]) for s in summaries]),
        "compute_seconds": mean_or_nan([float(s.get("compute_seconds", s["wall_seconds"])) for s in summaries]),
        "peak_rss_mb": max(float(s["peak_rss_mb"]) for s in summaries),
        "seeds": seeds,
    }


def compare_tasks(
    methods,
    out_dir: Path,
    seeds: int = 1,
    budget_seconds: float | None = None,
    budget_tokens: int | None = None,
    overrides=(),
    tune_methods: bool = True,
    log=print,
) -> dict:
    """Tune (unless ``tune_methods`` is False), run and judge every method on the task; returns compare.json's document."""
    if not budget_seconds and not budget_tokens:
        raise UsageError("evolm compare needs a budget: --budget-seconds S or --budget-tokens N")
    config = build_config(overrides=[*COMMON, *overrides])
    if not uses_task(config):
        raise UsageError("a task comparison needs a task: --task NAME or --reward MODULE:FUNCTION")
    methods = parse_methods(",".join(methods), TASK_METHODS, task=True)
    out_dir = Path(out_dir)
    if (out_dir / "compare.json").exists():
        raise UsageError(f"output folder {out_dir} already holds a comparison; choose another --out")
    runner = _Runner(overrides, budget_seconds, budget_tokens, log)
    fresh_seeds = list(range(TUNING_SEED + 1, TUNING_SEED + 1 + seeds))
    # The judge first: a reward that cannot be imported, raises or returns NaN, or --init weights that do
    # not fit, is one line before any run starts or anything is written.
    runner.judge(TUNING_SEED if tune_methods else fresh_seeds[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    sweep: dict = {}
    winners: dict = {}
    curves: dict[str, list] = {}
    for method in methods:
        # Each method's own defaults (population size, genome) decide its settings, e.g. es's step size.
        method_config = build_config(overrides=[*COMMON, *overrides, *EVOLUTION.get(method, [])])
        knob, values = SWEEPS[method]
        if tune_methods:
            sweep[method], winner = tune(method, runner, out_dir, method_config)
            if winner is None:
                rows.append({"method": method, "error": f"every {knob} of the sweep failed"})
                continue
        else:
            winner = {"knob": knob, "value": values[len(values) // 2], "reward": None}
        winners[method] = winner
        settings = method_settings(method, winner["value"], method_config)
        summaries, failure, method_curves = [], None, []
        for seed in fresh_seeds:
            log(f"evolm compare: {method} ({knob} = {winner['value']:g}) seed {seed} ...")
            run_dir = out_dir / f"{method}-seed{seed}"
            summary, failure = runner(method, seed, run_dir, settings)
            if summary is None:
                break
            summaries.append(summary)
            curves.setdefault(method, []).append(metrics_curve(run_dir, "reward"))
            method_curves.append(metrics_curve(run_dir, "train_reward"))
        if failure is not None:
            rows.append({"method": method, "error": failure})
            continue
        rows.append(_row(method, knob, winner["value"], summaries, fresh_seeds, method_curves))
        log(f"evolm compare: {method}: held-out reward {rows[-1]['reward']:.3f} ± {rows[-1]['reward_std']:.3f}")
    initial = [judge.initial for judge in runner.judges.values()]
    budget = f"{budget_seconds:g} s" if budget_seconds else f"{budget_tokens:,} forward tokens"
    document = {
        "task": config.task.name or "reward",
        "reward": config.task.reward or None,
        "init": config.model.init or None,
        "budget": budget,
        "budget_seconds": budget_seconds,
        "budget_tokens": budget_tokens,
        "seeds": fresh_seeds,
        "tuning_seed": TUNING_SEED if tune_methods else None,
        "tuned": tune_methods,
        "columns": COLUMNS,
        "initial": {key: mean_or_nan([i[key] for i in initial]) for key in ("reward", "distinct_2")},
        "rows": rows,
        "sweep": sweep,
        "winners": winners,
        "machine": machine(),
        "command": invoking_command(),
    }
    (out_dir / "compare.json").write_text(json.dumps(json_ready(document), indent=2) + "\n")
    (out_dir / "compare.md").write_text(task_markdown(document))
    plot_comparison(curves, out_dir / "compare.png", "reward", "held-out reward (greedy)")
    return document


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def verdict(rows: list[dict]) -> str:
    """One paragraph: who won, by how much and with how much drift; best evolution against the better of grpo and rloo."""
    done = [r for r in rows if "error" not in r and r["reward"] is not None and math.isfinite(r["reward"])]
    if not done:
        return "No method finished."
    ranked = sorted(done, key=_rank_key)
    best = ranked[0]
    text = f"Best: {best['method']} (held-out reward {best['reward']:.3f} ± {_number(best['reward_std'])}"
    text += f", KL drift {_number(best['kl_from_initial'], 4)} nats)"
    if len(ranked) > 1:
        text += f", {best['reward'] - ranked[1]['reward']:+.3f} ahead of {ranked[1]['method']}"
    text += "."
    evolution = [r for r in ranked if r["method"] in EVOLUTION_METHODS]
    gradient = [r for r in ranked if r["method"] in POLICY_GRADIENT]
    if evolution and gradient:
        e, g = evolution[0], gradient[0]
        outcome = "beats" if e["reward"] > g["reward"] else "ties" if e["reward"] == g["reward"] else "loses to"
        text += (
            f" Best evolution, {e['method']}, {outcome} the better of grpo/rloo, {g['method']}: "
            f"{e['reward']:.3f} against {g['reward']:.3f} ({e['reward'] - g['reward']:+.3f}), "
            f"drift {_number(e['kl_from_initial'], 4)} against {_number(g['kl_from_initial'], 4)} nats."
        )
    return text


def budget_warning(document: dict) -> str:
    """Rows whose runs did not get the budget they were given: overran a wall budget by a fifth (a long last
    generation or step) or never took a step (setup and the first report ate it); empty when none."""
    seconds = document.get("budget_seconds")
    rows = [r for r in document["rows"] if "error" not in r]
    over = [r["method"] for r in rows if seconds and r.get("compute_seconds", r["wall_seconds"]) > 1.2 * seconds]
    idle = [r["method"] for r in rows if not r["forward_tokens"]]
    parts = [f"overran the {seconds:g} s budget by more than 20%: {', '.join(over)}"] if over else []
    parts += [f"took no step within the budget: {', '.join(idle)}"] if idle else []
    return f"Unequal budgets — {'; '.join(parts)}." if parts else ""


def task_markdown(document: dict) -> str:
    """compare.md of a task comparison: the setting, the table, the verdict and the sweep."""
    seeds = ", ".join(str(s) for s in document["seeds"])
    tuning = (
        f"tuned on seed {document['tuning_seed']} (three values each, winner by held-out reward)"
        if document["tuned"]
        else "not tuned (each sweep's middle value)"
    )
    initial = document["initial"]
    lines = [
        f"Task {document['task']}: budget {document['budget']} per run, seeds {seeds}, {tuning}; "
        "mean ± std over seeds.",
        "",
        f"At the start: held-out reward {_number(initial['reward'])}, distinct-2 {_number(initial['distinct_2'])}. "
        "Held-out reward: greedy completions of the held-out prompts, every run's final weights judged by one "
        "task runtime on the start weights; KL: drift from the start on held-out corpus text (nats per position); "
        "train reward: the last logged training reward (n/a: the method trains on something else).",
        "",
        "| method | tuned (maximised) | held-out reward | train reward | KL from start | val loss | distinct-2 "
        "| forward tokens | compute s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error'].replace('|', '/')} | | | | | | | | |")
            continue
        knob = r["knob"].rsplit(".", 1)[-1]
        lines.append(
            f"| {r['method']} | {knob} {r['value']:g} ({r.get('trained_on') or '?'}) | {_number(r['reward'])} ± {_number(r['reward_std'])} "
            f"| {_number(r['train_reward'])} | {_number(r['kl_from_initial'], 4)} ± {_number(r['kl_std'], 4)} "
            f"| {_number(r['val_loss_final'])} | {_number(r['distinct_2'])} | {r['forward_tokens']:,.0f} "
            f"| {r.get('compute_seconds', r['wall_seconds']):.1f} | {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", verdict(document["rows"])]
    warning = budget_warning(document)
    lines += ["", warning] if warning else []
    if document["sweep"]:
        lines += ["", "Sweep (tuning seed; held-out reward per value, * the winner):", ""]
        lines += ["| method | setting | values |", "|---|---|---|"]
        for method, entries in document["sweep"].items():
            chosen = document["winners"].get(method, {}).get("value")
            cells = [
                f"{e['value']:g}: {'failed' if 'error' in e else _number(e['reward'])}{' *' if e['value'] == chosen else ''}"
                for e in entries
            ]
            lines.append(f"| {method} | {SWEEPS[method][0]} | {'; '.join(cells)} |")
    return "\n".join(lines) + "\n"
