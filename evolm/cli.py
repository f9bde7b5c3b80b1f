"""The ``evolm`` command line: ``evolm run`` (more subcommands arrive with later features).

User mistakes print one line ``evolm: error: ...`` and exit 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from evolm.config import build_config, parse_assignment
from evolm.errors import UsageError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(message)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="TOML file of settings (see config.toml in any run folder)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field by its dotted name, e.g. --set model.width=128 (repeatable)")
    parser.add_argument("--model", choices=None, metavar="gpt|lstm", help="model family (default gpt: the small causal Transformer)")
    parser.add_argument("--data", metavar="PATH", help="UTF-8 text file or folder of .txt files (default: CPython's bundled docs)")
    parser.add_argument("--strategy", metavar="NAME", help="search strategy (default es: OpenAI-ES)")
    parser.add_argument("--population-size", type=str, metavar="N", help="individuals per generation")
    parser.add_argument("--generations", type=str, metavar="N", help="number of generations")
    parser.add_argument("--seed", type=str, metavar="N", help="run seed: the same seed gives the same metrics")
    parser.add_argument("--device", metavar="cpu|cuda", help="where the model runs (default cpu)")
    parser.add_argument("--fitness", metavar="TERMS", help='fitness terms and weights, e.g. "likelihood=1,self=0.5,diversity=0.2"')
    parser.add_argument("--genome", metavar="NAME", help="genome encoding (default seed)")
    parser.add_argument("--params", metavar="REGEX", help="which parameters evolve: names matching this pattern (default all)")
    parser.add_argument("--workers", metavar="N", help="evaluate on N Ray actors (a local Ray runtime unless --ray-address)")
    parser.add_argument("--ray-address", metavar="auto|HOST:PORT", help="join an existing Ray cluster")
    parser.add_argument("--gpus-per-worker", metavar="G", help="GPUs per Ray actor (fractions allowed)")
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/<name>-<time>)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to replace an earlier run's files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evolm", description="Evolutionary optimisation of language models.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run_parser = commands.add_parser("run", help="evolve a language model", description="Evolve a language model.")
    _add_run_arguments(run_parser)
    return parser


def _overrides_from_args(args) -> list[tuple[str, str]]:
    overrides = [parse_assignment(item) for item in args.overrides]
    for option, key in (("model", "model.name"), ("data", "data.path"), ("strategy", "strategy.name"),
                        ("population_size", "strategy.population_size"), ("generations", "generations"),
                        ("seed", "seed"), ("device", "device"), ("fitness", "fitness.terms"),
                        ("genome", "genome.name"), ("params", "genome.params"), ("workers", "evaluator.workers"),
                        ("ray_address", "evaluator.ray_address"), ("gpus_per_worker", "evaluator.gpus_per_worker")):
        value = getattr(args, option)
        if value is not None:
            overrides.append((key, value))
    return overrides


def command_run(args) -> int:
    from evolm.engine import run

    config = build_config(args.config, _overrides_from_args(args))
    run(config, out_dir=args.out, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return {"run": command_run}[args.command](args)
    except UsageError as error:
        print(f"evolm: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evolm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
