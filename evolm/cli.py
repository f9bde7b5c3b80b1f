"""The ``evolm`` command line: ``evolm run | resume | sample | plot | compare | train``.

User mistakes print one line ``evolm: error: ...`` and exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evolm.baselines import run_adam
from evolm.compare import compare, parse_methods
from evolm.compare_tasks import compare_tasks, parse_task_methods
from evolm.config import STRATEGY_DEFAULTS, build_config, strategy_defaults
from evolm.config_io import parse_assignment
from evolm.engine import resume, run
from evolm.errors import UsageError
from evolm.plot import plot_run
from evolm.sampling import sample_text
from evolm.tasks.fitness import uses_task
from evolm.textstats import printable

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(message)


def _absolute(path: str) -> str:
    """A path as recorded in config.toml: absolute, so a resume or a compare's child runs find it from anywhere."""
    return str(Path(path).expanduser().absolute())


def _reward_spec(spec: str) -> str:
    """``path/file.py:function`` made absolute (a module name stays as written): child runs find it anywhere."""
    location, colon, function = spec.rpartition(":")
    return f"{_absolute(location)}:{function}" if colon and location.endswith(".py") else spec


def _add_task_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task",
        metavar="NAME",
        help="optimise a reward without a gradient instead of likelihood: self-feedback, arithmetic, python-lines",
    )
    parser.add_argument(
        "--reward",
        type=_reward_spec,
        metavar="MODULE:FUNCTION",
        help="your own reward(prompts, completions) -> list of floats (a module on the path, or path/file.py:function)",
    )
    parser.add_argument(
        "--prompts", type=_absolute, metavar="FILE", help="prompts for --reward, one per line (default: corpus windows)"
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    _add_task_arguments(parser)
    parser.add_argument(
        "--config", metavar="FILE.toml", help="TOML file of settings (see config.toml in any run folder)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field by its dotted name, e.g. --set model.width=128 (repeatable)",
    )
    parser.add_argument(
        "--model",
        choices=None,
        metavar="gpt|lstm|hf:PATH",
        help="model family (default gpt: the small causal Transformer), or hf:PATH, a local Hugging Face "
        "causal LM checkpoint folder (needs pip install 'evolm[hf]')",
    )
    parser.add_argument(
        "--data", metavar="PATH", help="UTF-8 text file or folder of .txt files (default: CPython's bundled docs)"
    )
    parser.add_argument(
        "--init",
        type=_absolute,
        metavar="PATH",
        help="start from trained weights: a run folder (e.g. an adam run of evolm compare) or a .safetensors file; "
        "the model settings must match the run that saved them",
    )
    parser.add_argument(
        "--strategy",
        metavar="NAME",
        help="es (OpenAI-ES, default), ga, nsga2, cmaes, snes (separable NES: a step size per value) or pbt "
        "(population-based training); it also chooses the defaults of the settings you leave unset (see below)",
    )
    parser.add_argument(
        "--population-size",
        type=str,
        metavar="N",
        help=f"individuals per generation (default by strategy: {_default_by_strategy('strategy.population_size')})",
    )
    parser.add_argument("--generations", type=str, metavar="N", help="number of generations")
    parser.add_argument("--seed", type=str, metavar="N", help="run seed: the same seed gives the same metrics")
    parser.add_argument("--device", metavar="cpu|cuda", help="where the model runs (default cpu)")
    parser.add_argument(
        "--fitness", metavar="TERMS", help='fitness terms and weights, e.g. "likelihood=1,self=0.5,diversity=0.2"'
    )
    parser.add_argument(
        "--genome",
        metavar="NAME",
        help=f"genome encoding: seed, lowrank or vector (default by strategy: {_default_by_strategy('genome.name')})",
    )
    parser.add_argument(
        "--params",
        metavar="REGEX",
        help="which parameters evolve: names matching this pattern (default by "
        f"strategy: {_default_by_strategy('genome.params')}; for hf:PATH, .* means the last block's "
        "attention and MLP)",
    )
    parser.add_argument(
        "--workers",
        metavar="N",
        help="evaluate on N workers: Ray actors (a local Ray runtime unless "
        "--ray-address), or in-process threads with --backend threads",
    )
    parser.add_argument("--backend", metavar="ray|threads", help="where --workers run (default ray)")
    parser.add_argument("--ray-address", metavar="auto|HOST:PORT", help="join an existing Ray cluster")
    parser.add_argument("--gpus-per-worker", metavar="G", help="GPUs per Ray actor (fractions allowed)")
    parser.add_argument("--refine-every", metavar="K", help="gradient refinement every K generations (default 0: off)")
    parser.add_argument("--refine-steps", metavar="N", help="gradient steps per refinement (default 10)")
    parser.add_argument(
        "--refine-mode", metavar="lamarckian|baldwinian", help="write refined weights back, or keep only the fitness"
    )
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/<name>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to replace an earlier run's files")
    parser.add_argument(
        "--tensorboard",
        action="store_const",
        const="true",
        default=None,
        help="also write TensorBoard scalars to RUN_DIR/tensorboard (needs the tensorboard package)",
    )
    parser.add_argument(
        "--checkpoint-every",
        metavar="N",
        help="write a checkpoint every N generations (default -1: auto, by the checkpoint's cost, at most about 5%% of the run; 0: none, resume then starts over)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _default_by_strategy(key: str) -> str:
    """``"cmaes 24, pbt 8, others 48"``: the value ``key`` takes under each strategy when left unset."""
    common = strategy_defaults("es")[key]
    special = [
        f"{name} {strategy_defaults(name)[key]}" for name in STRATEGY_DEFAULTS if strategy_defaults(name)[key] != common
    ]
    return ", ".join([*special, f"others {common}"])


STRATEGY_EPILOG = f"""\
Choosing a strategy chooses working defaults for what you leave unset; anything you set
(a flag, --set, a --config file) wins:
  es, ga, nsga2  population {strategy_defaults("es")["strategy.population_size"]}, seed genome over every parameter, sigma {strategy_defaults("es")["strategy.sigma"]}
  cmaes          population {strategy_defaults("cmaes")["strategy.population_size"]}, vector genome over --params '{strategy_defaults("cmaes")["genome.params"]}'
                 (LayerNorm gains and biases and the output bias: 896 genes on the default
                 model; CMA's covariance is genes^2 and decomposed every generation), sigma {strategy_defaults("cmaes")["strategy.sigma"]}
  pbt            population {strategy_defaults("pbt")["strategy.population_size"]}: every member keeps its own copy of the evolving
                 weights and Adam's two moments, members x 3 x the weight bytes
                 (0.55 MB of weights on the default model; 204 MB on a 51M-parameter one)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evolm", description="Evolutionary optimisation of language models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_parser = commands.add_parser(
        "run",
        help="evolve a language model",
        description="Evolve a language model.",
        epilog=STRATEGY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(run_parser)
    resume_parser = commands.add_parser(
        "resume",
        help="continue an interrupted run from its last checkpoint",
        description="Continue an interrupted run; its metrics end as an uninterrupted run's would.",
    )
    resume_parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds config.toml and checkpoint/)")
    resume_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    sample_parser = commands.add_parser(
        "sample",
        help="print text from a finished run's model",
        description="Print text sampled from a finished run's model.safetensors.",
    )
    sample_parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    sample_parser.add_argument("--prompt", default="", metavar="TEXT", help="text to continue (default: a newline)")
    sample_parser.add_argument(
        "--tokens",
        type=int,
        default=200,
        metavar="N",
        help="tokens to generate: bytes, or a Hugging Face model's tokens (default 200)",
    )
    sample_parser.add_argument(
        "--temperature", type=float, default=0.8, metavar="T", help="sampling temperature; 0 is greedy (default 0.8)"
    )
    sample_parser.add_argument("--seed", type=int, default=0, metavar="N", help="sampling seed (default 0)")
    plot_parser = commands.add_parser(
        "plot",
        help="write fitness.png of a run",
        description="Plot best/mean fitness, validation loss and diversity per generation.",
    )
    plot_parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holds metrics.jsonl)")
    plot_parser.add_argument("--out", metavar="FILE.png", help="image path (default RUN_DIR/fitness.png)")
    compare_parser = commands.add_parser(
        "compare",
        help="evolution vs gradient baselines on one budget",
        description="Run methods side by side on the same corpus, model, initial "
        "weights and budget; writes compare.md, compare.json, compare.png.",
    )
    compare_parser.add_argument(
        "--methods",
        metavar="LIST",
        help="comma-separated: es, ga, cmaes, hybrid (es + gradient refinement), pbt, adam, reinforce, mezo; with a "
        "task also grpo, rloo, not pbt (default: es,ga,hybrid,pbt,adam,reinforce,mezo; with a task all it can run)",
    )
    compare_parser.add_argument("--budget-seconds", type=str, metavar="S", help="wall seconds per run")
    compare_parser.add_argument("--budget-tokens", type=str, metavar="N", help="forward tokens per run")
    compare_parser.add_argument("--seeds", type=str, default="1", metavar="K", help="seeds per method (default 1)")
    compare_parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override applied to every method, e.g. --set threads=1",
    )
    compare_parser.add_argument(
        "--init",
        type=_absolute,
        metavar="PATH",
        help="every method starts from these trained weights (a run folder or .safetensors)",
    )
    compare_parser.add_argument("--out", default="compare", metavar="DIR", help="output folder (default ./compare)")
    compare_parser.add_argument(
        "--no-tune", action="store_true", help="with a task: skip the three-value sweep per method (middle values)"
    )
    _add_task_arguments(compare_parser)
    train_parser = commands.add_parser(
        "train",
        help="train a start point with Adam on the corpus (or a task's own text)",
        description="Train with Adam on next-token likelihood: the usual start point of evolm run --init. "
        "Save start points by step count (--steps), not time, so they repeat on any machine.",
    )
    _add_task_arguments(train_parser)
    train_parser.add_argument("--config", metavar="FILE.toml", help="TOML file of settings")
    train_parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field"
    )
    for option, text in (
        ("--model", "gpt or lstm (default gpt)"),
        ("--data", "UTF-8 text file or folder (default: CPython's bundled docs, or the task's own text)"),
        ("--seed", "run seed (default 0)"),
        ("--device", "cpu or cuda"),
    ):
        train_parser.add_argument(option, metavar=option.strip("-").upper(), help=text)
    train_parser.add_argument("--steps", type=str, metavar="N", help="Adam steps (default 1000)")
    train_parser.add_argument("--budget-seconds", type=str, metavar="S", help="stop after S seconds instead")
    train_parser.add_argument("--learning-rate", type=str, default="3e-3", metavar="LR", help="(default 3e-3)")
    train_parser.add_argument("--out", required=True, metavar="DIR", help="run folder: evolm run --init DIR")
    train_parser.add_argument("--overwrite", action="store_true", help="allow --out to replace an earlier run's files")
    return parser


def _overrides_from_args(args) -> list[tuple[str, str]]:
    overrides = [parse_assignment(item) for item in args.overrides]
    for option, key in (
        ("task", "task.name"),
        ("reward", "task.reward"),
        ("prompts", "task.prompts"),
        ("model", "model.name"),
        ("data", "data.path"),
        ("init", "model.init"),
        ("strategy", "strategy.name"),
        ("population_size", "strategy.population_size"),
        ("generations", "generations"),
        ("seed", "seed"),
        ("device", "device"),
        ("fitness", "fitness.terms"),
        ("genome", "genome.name"),
        ("params", "genome.params"),
        ("workers", "evaluator.workers"),
        ("backend", "evaluator.backend"),
        ("ray_address", "evaluator.ray_address"),
        ("gpus_per_worker", "evaluator.gpus_per_worker"),
        ("refine_every", "refine.every"),
        ("refine_steps", "refine.steps"),
        ("refine_mode", "refine.mode"),
        ("checkpoint_every", "checkpoint_every"),
        ("tensorboard", "tensorboard"),
    ):
        value = getattr(args, option, None)  # evolm train and compare take only some of the options
        if value is not None:
            overrides.append((key, value))
    return overrides


def command_run(args) -> int:
    config = build_config(args.config, _overrides_from_args(args))
    run(config, out_dir=args.out, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def command_resume(args) -> int:
    resume(args.run_dir, progress=not args.quiet)
    return 0


def command_sample(args) -> int:
    text = sample_text(
        args.run_dir, prompt=args.prompt, tokens=args.tokens, temperature=args.temperature, seed=args.seed
    )
    print(args.prompt + printable(text))
    return 0


def command_plot(args) -> int:
    print(plot_run(args.run_dir, args.out))
    return 0


def _positive_number(text, option, kind=float):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option} must be a positive number, got {text!r}") from None
    if value <= 0:
        raise UsageError(f"{option} must be positive, got {text}")
    return value


def command_compare(args) -> int:
    seeds = _positive_number(args.seeds, "--seeds", int)
    budget_seconds = _positive_number(args.budget_seconds, "--budget-seconds") if args.budget_seconds else None
    budget_tokens = _positive_number(args.budget_tokens, "--budget-tokens", int) if args.budget_tokens else None
    overrides = _overrides_from_args(args)
    config = build_config(overrides=overrides)  # a bad override (an unknown task) fails here, before any run starts
    if uses_task(config):  # tuned methods on the task's reward, judged on held-out prompts
        methods = parse_task_methods(args.methods)
        compare_tasks(methods, args.out, seeds, budget_seconds, budget_tokens, overrides, not args.no_tune)
    else:
        methods = parse_methods(args.methods or "es,ga,hybrid,pbt,adam,reinforce,mezo")
        compare(methods, args.out, seeds, budget_seconds, budget_tokens, overrides)
    print(Path(args.out, "compare.md").read_text())
    return 0


def command_train(args) -> int:
    config = build_config(args.config, _overrides_from_args(args))
    steps = _positive_number(args.steps or "1000", "--steps", int) if not args.budget_seconds or args.steps else None
    seconds = _positive_number(args.budget_seconds, "--budget-seconds") if args.budget_seconds else None
    learning_rate = _positive_number(args.learning_rate, "--learning-rate")
    run_adam(config, args.out, seconds, steps=steps, learning_rate=learning_rate, overwrite=args.overwrite)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        commands = {
            "run": command_run,
            "resume": command_resume,
            "sample": command_sample,
            "plot": command_plot,
            "compare": command_compare,
            "train": command_train,
        }
        return commands[args.command](args)
    except UsageError as error:
        print(f"evolm: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evolm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
