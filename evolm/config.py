"""Run configuration: nested dataclasses, TOML files, dotted ``--set`` overrides, validation.

Every mistake becomes a :class:`~evolm.errors.UsageError` naming the field, never a traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evolm.config_io import apply_mapping, load_toml, set_dotted
from evolm.errors import UsageError
from evolm.fitness_terms import validate_fitness_config
from evolm.genome import GENOMES
from evolm.models import MODEL_NAMES
from evolm.refine import validate_refine_config
from evolm.strategies import STRATEGIES
from evolm.tasks import validate_task_config


@dataclass
class DataConfig:
    path: str = ""  # "" = the embedded CPython documentation corpus
    val_fraction: float = 0.1  # the last 10% of the tokens validate
    batch_size: int = 16  # fitness batch: one batch of windows shared by the whole generation
    val_sequences: int = 64  # fixed validation windows, the same every generation


@dataclass
class ModelConfig:
    name: str = "gpt"  # gpt | lstm
    context: int = 64
    width: int = 64
    layers: int = 2
    heads: int = 4  # gpt only
    ff: int = 256  # gpt only
    dropout: float = 0.0
    init: str = ""  # trained weights to start from: a run folder (its model.safetensors) or a .safetensors file


@dataclass
class StrategyConfig:
    name: str = "es"
    # population_size and sigma: None (unset) means the chosen strategy's default (STRATEGY_DEFAULTS), set by validate()
    population_size: int | None = None  # must be even for es (antithetic pairs)
    sigma: float | None = (
        None  # noise scale (Salimans et al. 2017 use 0.02); ga/nsga2: initial mutation scale; cmaes: initial step size
    )
    # es: step size on the gradient estimate (Salimans et al. use 0.01 with Adam); snes: lr_mu, the center's
    # natural-gradient step (NES uses 1). None: the strategy's default
    learning_rate: float | None = None
    optimizer: str = (
        "adam"  # es center step: adam (Salimans et al. 2017) | sgd (plain step, Qiu et al. 2025; no optimiser state)
    )
    weight_decay: float = 0.0  # L2 coefficient applied with the Adam step
    # snes (separable NES): the step sizes' rate lr_sigma (0: NES's (3 + ln d) / (5 sqrt d), d evolving values),
    # fitness shaping (nes: NES utilities | ranks: centred ranks), mirrored pairs +eps/-eps
    sigma_learning_rate: float = 0.0
    utilities: str = "nes"
    mirrored: bool = True
    # ga / nsga2 (sigma is the initial mutation scale; it adapts by the 1/5th success rule)
    elites: int = 2  # best individuals copied unchanged into the next generation (ga)
    tournament_size: int = 3  # ga; nsga2 draws parents by binary crowded tournament
    cxpb: float = 0.2  # probability that a pair of offspring is crossed
    mutpb: float = 1.0  # probability that an offspring is mutated (Such et al. mutate every child)
    crossover: str = "layers"  # seed/lowrank: layers | pairs; vector: blend | sbx
    mutation: str = "gaussian"  # vector: gaussian | polynomial
    indpb: float = 0.1  # vector: per-gene mutation probability
    bound: float = 1.0  # vector: genes (weight deltas) live in [-bound, bound] for bounded operators
    adapt_sigma: bool = True  # 1/5th success rule on the mutation scale
    resample_every: int = 4  # ga/nsga2: generations that share one fitness batch (elites are re-scored when it changes)
    max_lineage: int = 8  # seed/lowrank ga: fold the best into a new base when its genome grows longer (each entry costs a noise regeneration per evaluation)
    hall_of_fame: int = 5
    # pbt (Jaderberg et al. 2017; Ray Tune's defaults)
    pbt_steps: int = 50  # Adam steps per member per generation (one ready interval)
    pbt_quantile: float = 0.25  # the bottom quantile copies the top quantile
    pbt_resample: float = 0.25  # probability that explore redraws a hyperparameter set instead of perturbing it


@dataclass
class GenomeConfig:
    name: str | None = None  # seed | lowrank | vector; None: the strategy's default (STRATEGY_DEFAULTS)
    params: str | None = None  # regex over parameter names: which tensors evolve; None: the strategy's default
    rank: int = 1  # lowrank: rank r of each matrix perturbation (EGGROLL uses r = 1 at scale)
    # lowrank: individuals per EGGROLL batched pass; 1 = one at a time in place; 0 = by device and fitness:
    # scoring fixed text 1 on CPU (fastest on 2 cores, benchmarks/throughput.py) and 16 on CUDA; writing 16
    batch_individuals: int = 0


@dataclass
class FitnessConfig:
    terms: str = "likelihood=1"  # weighted terms, e.g. "likelihood=1,self=0.5,diversity=0.2"
    prompts: int = 8  # prompts drawn from the training text per generation (self/diversity/margin terms)
    prompt_tokens: int = 16  # length of each prompt
    generate_tokens: int = 32  # continuation length the candidate writes
    temperature: float = 1.0  # sampling temperature of the candidate's generations
    scorer: str = "self"  # self: the candidate judges itself; reference: the frozen initial model judges
    margin: float = 1.0  # m in the margin term max(0, m + s_n - s_p)


@dataclass
class TaskConfig:
    """A task (evolm.tasks): prompts and a reward without a gradient instead of the corpus fitness terms."""

    name: str = ""  # "" = no task; self-feedback | arithmetic | python-lines | reward (a user's: task.reward)
    reward: str = ""  # module:function (or path/file.py:function) of a user's reward; sets name = "reward"
    prompts: str = ""  # a user's reward: a file of prompts, one per line; "" = windows of the corpus
    seed: int = 0  # the task's data (prompts, generated corpus) come from this seed, not the run's
    batch: int = 32  # prompts every individual answers per generation: the same for all (common random numbers)
    heldout: int = 0  # held-out prompts the report scores (0: the task's whole held-out split)
    new_tokens: int = 0  # longest completion in tokens (0: the task's own)
    decoding: str = "greedy"  # greedy | sample (seeded, at fitness.temperature)
    normalise: str = "zscore"  # rewards per prompt across the population: zscore | ranks | none
    fitness: str = "reward"  # what evolution maximises: reward | partial (partial credit) | logprob (of the answer)
    diversity: float = 1.0  # self-feedback: weight of the diversity term (nats per unit of diversity share)
    kl_sequences: int = 16  # held-out corpus windows the KL drift from the initial model is measured on


EVALUATOR_BACKENDS = ("ray", "threads")


@dataclass
class EvaluatorConfig:
    workers: int = 0  # 0: in-process, one worker; N: N workers on the backend below
    backend: str = (
        "ray"  # ray: N Ray actors (a local runtime unless ray_address is set); threads: N in-process replicas
    )
    ray_address: str = ""  # "auto" or HOST:PORT of an existing Ray cluster
    threads_per_worker: int = 1  # torch threads inside each actor (threads backend: each replica's forwards)
    gpus_per_worker: float = 0.0  # fractional GPUs per actor, e.g. 0.25


@dataclass
class RefineConfig:
    every: int = 0  # refine every k generations (0: off)
    steps: int = 10  # K gradient steps per refinement
    mode: str = "lamarckian"  # lamarckian: weights written back; baldwinian: only the fitness is kept
    loss: str = "likelihood"  # likelihood | self (cross-entropy plus the self-feedback margin term)
    optimizer: str = "adam"  # adam | sgd
    learning_rate: float = 3e-3
    batch_size: int = 32


# What choosing a strategy chooses, for every field the user leaves unset (None above). Anything set
# explicitly (a flag, --set, a --config file, a Python API setting) wins, and a run's config.toml holds
# the resolved values, so it reloads to the same config.
COMMON_DEFAULTS: dict[str, Any] = {
    "strategy.population_size": 48,
    "strategy.sigma": 0.02,
    "strategy.learning_rate": 0.01,
    "genome.name": "seed",
    "genome.params": ".*",
}
# Each strategy's own working defaults live beside its algorithm (``Strategy.defaults``).
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(cls.defaults) for name, cls in STRATEGIES.items()}


def strategy_defaults(name: str) -> dict[str, Any]:
    """The value every unset field takes when strategy ``name`` is chosen."""
    return {**COMMON_DEFAULTS, **STRATEGY_DEFAULTS.get(name, {})}


def resolve_strategy_defaults(config: RunConfig) -> None:
    """Fill every unset (None) field with the chosen strategy's default; set fields are left alone."""
    for key, value in strategy_defaults(config.strategy.name).items():
        section, name = key.split(".")
        target = getattr(config, section)
        if getattr(target, name) is None:
            setattr(target, name, value)


@dataclass
class RunConfig:
    seed: int = 0
    generations: int = 400
    budget_seconds: float = 0.0  # stop after this much wall time (0: run every generation)
    budget_tokens: int = 0  # stop once this many fitness forward tokens are spent (0: no token budget)
    device: str = "cpu"
    name: str = ""  # run name; "" derives one from the strategy, model and seed
    threads: int = 0  # torch threads; 0 leaves torch's default
    # Validation loss and the report (samples' statistics, or a task's held-out reward and drift) on the first
    # generation, every report_every-th and the last: measuring is not evolution's work, and on Ray it runs
    # on the driver while the actors wait. 1 measures every generation.
    report_every: int = 10
    checkpoint_every: int = -1  # -1: auto (when 20x the last checkpoint's time has passed: <= 5% of the run; always the last); N: every N generations; 0: none (resume starts over)
    tensorboard: bool = (
        False  # also log metrics as TensorBoard scalars under RUN_DIR/tensorboard (needs the tensorboard package)
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    genome: GenomeConfig = field(default_factory=GenomeConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_config(toml_path: str | Path | None = None, overrides: Sequence[tuple[str, Any]] = ()) -> RunConfig:
    """Defaults, then the TOML file, then overrides in order; validated."""
    config = RunConfig()
    if toml_path is not None:
        apply_mapping(config, load_toml(toml_path))
    for key, value in overrides:
        set_dotted(config, key, value)
    validate(config)
    return config


def config_from_dict(mapping: dict) -> RunConfig:
    config = RunConfig()
    apply_mapping(config, mapping)
    validate(config)
    return config


def _positive(value, key):
    if value <= 0:
        raise UsageError(f"config field {key} must be positive, got {value}")


def validate(config: RunConfig) -> None:
    """Check every field; first fill the fields left unset with the chosen strategy's defaults."""

    if config.strategy.name not in STRATEGIES:
        raise UsageError(
            f"config field strategy.name: unknown strategy {config.strategy.name!r} (choose from {', '.join(STRATEGIES)})"
        )
    resolve_strategy_defaults(config)
    for key in (
        "generations",
        "report_every",
        "data.batch_size",
        "data.val_sequences",
        "strategy.population_size",
        "model.context",
        "model.width",
        "model.layers",
        "model.heads",
        "model.ff",
        "strategy.sigma",
    ):
        obj = config
        for part in key.split("."):
            obj = getattr(obj, part)
        _positive(obj, key)
    if not 0.0 < config.data.val_fraction < 1.0:
        raise UsageError(f"config field data.val_fraction must be between 0 and 1, got {config.data.val_fraction}")
    if config.model.name.startswith("hf:"):
        if not config.model.name[3:]:
            raise UsageError("config field model.name: hf: needs a checkpoint folder, e.g. --model hf:./my-gpt2")
    elif config.model.name not in (*MODEL_NAMES, "custom"):  # custom: a module given to the Python API (evolm.evolve)
        raise UsageError(
            f"config field model.name: unknown model {config.model.name!r} "
            f"(choose from {', '.join(MODEL_NAMES)}, or hf:PATH for a local Hugging Face checkpoint)"
        )
    if config.model.init and config.model.name not in MODEL_NAMES:
        raise UsageError(
            f"config field model.init: trained weights start a built-in model ({', '.join(MODEL_NAMES)}); "
            f"{config.model.name!r} starts from its own weights"
        )
    if config.model.name == "gpt" and config.model.width % config.model.heads:
        raise UsageError(
            f"config field model.width ({config.model.width}) must be divisible by model.heads ({config.model.heads})"
        )
    if config.tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError(
                "config field tensorboard is on but the tensorboard package is not installed (pip install tensorboard)"
            )
    if config.checkpoint_every < -1:
        raise UsageError(
            f"config field checkpoint_every must be -1 (auto), 0 (no checkpoints) or positive, got {config.checkpoint_every}"
        )
    if config.strategy.optimizer not in ("adam", "sgd"):
        raise UsageError(f"config field strategy.optimizer must be adam or sgd, got {config.strategy.optimizer!r}")
    if config.threads < 0:
        raise UsageError(f"config field threads must be 0 (torch's default) or positive, got {config.threads}")
    if config.device not in ("cpu", "cuda") and not config.device.startswith("cuda:"):
        raise UsageError(f"config field device must be cpu or cuda, got {config.device!r}")

    try:
        re.compile(config.genome.params or "")
    except re.error as error:
        raise UsageError(f"config field genome.params is not a valid regular expression: {error}") from None
    if config.evaluator.workers < 0:
        raise UsageError(
            f"config field evaluator.workers must be 0 (in-process) or positive, got {config.evaluator.workers}"
        )
    if config.evaluator.backend not in EVALUATOR_BACKENDS:
        raise UsageError(
            f"config field evaluator.backend: unknown backend {config.evaluator.backend!r} "
            f"(choose from {', '.join(EVALUATOR_BACKENDS)})"
        )
    if config.evaluator.backend == "threads" and config.evaluator.ray_address:
        raise UsageError(
            "config field evaluator.ray_address: the threads backend runs on this machine only; "
            "drop the address or use evaluator.backend = ray"
        )

    validate_fitness_config(config)
    validate_task_config(config)

    if config.genome.name not in GENOMES:
        raise UsageError(
            f"config field genome.name: unknown genome {config.genome.name!r} (choose from {', '.join(GENOMES)})"
        )
    _positive(config.genome.rank, "genome.rank")
    if config.genome.batch_individuals < 0:
        raise UsageError(
            f"config field genome.batch_individuals must be 0 (by device) or positive, "
            f"got {config.genome.batch_individuals}"
        )
    if config.budget_tokens < 0:
        raise UsageError(f"config field budget_tokens must be 0 (no budget) or positive, got {config.budget_tokens}")
    if config.budget_seconds < 0:
        raise UsageError(f"config field budget_seconds must be 0 (no budget) or positive, got {config.budget_seconds}")

    validate_refine_config(config)
    STRATEGIES[config.strategy.name].validate(config)
