"""The Python API: evolve any PyTorch language model, or any module under your own fitness function.

::

    import evolm
    from evolm.api import time_major

    summary = evolm.evolve(MyLSTM, data="corpus.txt", adapter=time_major, generations=50, out="runs/mine")

``model`` is an ``nn.Module`` (evolved in place: it ends holding the evolved weights) or a
zero-argument factory returning one (required on Ray: every actor builds its own model, under the
run seed, so all start identical). Its ``forward`` takes token ids ``(batch, time)``; ``adapter``
turns whatever it returns into logits ``(batch, time, vocab)`` (:func:`time_major`,
:func:`logits_from`, or any callable). ``fitness`` is ``None`` (the configured corpus terms,
``fitness.terms``, on text tokenized by ``tokenizer``: bytes by default), a terms string such as
``"likelihood=1,diversity=0.2"``, or a plain callable ``fitness(module) -> float`` (higher is
better; it may also take ``generation=``). A run goes through :func:`evolm.engine.run` with a
picklable worker factory, so strategies, Ray evaluators, refinement, checkpoints, logging and
:func:`resume` behave as for ``evolm run``. ``model="hf:PATH"`` evolves a local Hugging Face
checkpoint (:mod:`evolm.models.hf`); ``model="gpt"`` or ``"lstm"`` a built-in model, as ``evolm run`` does.
:func:`resume` continues any interrupted run, whether :func:`evolve` or ``evolm run`` started it.

Before a module that reads text is evolved (or resumed), :mod:`evolm.probe` checks on a tiny batch that
the rows of a batch do not affect each other and that no position sees a later token: the silent mistake
of an ``nn.LSTM`` without ``batch_first`` is one UsageError, not a run that learns the wrong thing
(``probe=False`` skips the check). Adapters live in :mod:`evolm.adapters` and are re-exported here.
"""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evolm.adapters import (  # noqa: F401 - re-exported: evolm.api.time_major etc. stay where users import them
    AdaptedModel,
    ModelInfo,
    TimeMajorIO,
    check_logits,
    default_logits,
    logits_from,
    model_context_of,
    param_space,
    time_major,
    time_major_io,
    unwrap,
)
from evolm.data import ByteTokenizer, Corpus, load_corpus_text
from evolm.errors import UsageError
from evolm.fitness import build_fitness, finite_or_worst, mean_log_likelihood
from evolm.genome import make_genome
from evolm.models.base import LanguageModel
from evolm.seeding import scoped_torch_seed

CUSTOM_MODEL = "custom"  # config.model.name of a run whose module came through this API

# Keyword settings of evolve(): a short name, or any config field as section__field (strategy__sigma=0.05).
SETTINGS = {
    "generations": "generations",
    "seed": "seed",
    "device": "device",
    "threads": "threads",
    "name": "name",
    "budget_seconds": "budget_seconds",
    "budget_tokens": "budget_tokens",
    "checkpoint_every": "checkpoint_every",
    "strategy": "strategy.name",
    "population_size": "strategy.population_size",
    "sigma": "strategy.sigma",
    "learning_rate": "strategy.learning_rate",
    "weight_decay": "strategy.weight_decay",
    "genome": "genome.name",
    "params": "genome.params",
    "rank": "genome.rank",
    "terms": "fitness.terms",
    "context": "model.context",
    "batch_size": "data.batch_size",
    "val_fraction": "data.val_fraction",
    "val_sequences": "data.val_sequences",
    "workers": "evaluator.workers",
    "ray_address": "evaluator.ray_address",
    "threads_per_worker": "evaluator.threads_per_worker",
    "gpus_per_worker": "evaluator.gpus_per_worker",
    "refine_every": "refine.every",
    "refine_steps": "refine.steps",
    "refine_mode": "refine.mode",
}


# --- corpus and fitness -------------------------------------------------------------------------------


def tokenizer_vocab(tokenizer) -> int:
    """The tokenizer's vocabulary size (``vocab_size``, else ``len``); 0 when it says neither."""
    size = getattr(tokenizer, "vocab_size", None)
    if size is None:
        try:
            size = len(tokenizer)
        except TypeError:
            size = 0
    return int(size)


def load_corpus(config, tokenizer=None) -> Corpus:
    """The configured corpus (``data.path``, or the embedded default) tokenized by ``tokenizer`` (bytes by default)."""
    tokenizer = tokenizer or ByteTokenizer()
    text = load_corpus_text(config.data.path or None)
    tokens = torch.as_tensor(tokenizer.encode(text), dtype=torch.long).reshape(-1)
    return Corpus(tokens, config.model.context, config.data.val_fraction, source=config.data.path or "embedded")


class NoCorpus:
    """Stands in for the corpus when a user fitness function needs no text."""

    source = "none (user fitness function)"
    train = val = torch.empty(0, dtype=torch.long)


def _takes_generation(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "generation" in parameters


def _as_values(value, what: str) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Real):
        return (float(value),)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, (numbers.Real, torch.Tensor)) for v in value):
        return tuple(float(v) for v in value)
    raise UsageError(f"{what} must return a number (higher is better), got {type(value).__name__}")


class CallableFitness:
    """A user's ``fitness(module) -> float`` (or ``fitness(module, generation=g)``) behind the worker's
    fitness interface. It receives the user's own module with the individual's weights applied."""

    objectives = 1

    def __init__(self, function: Callable):
        self.function = function
        self.name = getattr(function, "__qualname__", type(function).__name__)
        self._generation = _takes_generation(function)

    def context(self, generation: int) -> int:
        return generation

    def tokens(self, context) -> int:
        return 0  # unknown: a user fitness counts no forward tokens

    def __call__(self, model: nn.Module, generation) -> tuple[float, ...]:
        module = unwrap(model)
        value = self.function(module, generation=generation) if self._generation else self.function(module)
        values = _as_values(value, f"fitness function {self.name}")
        if len(values) != self.objectives:
            raise UsageError(
                f"fitness function {self.name} returned {len(values)} values; this strategy needs one number"
            )
        return tuple(finite_or_worst(v) for v in values)

    def report(self, model: nn.Module, generation: int) -> dict:
        return {}


def _validation_loss(model: nn.Module, batch) -> float:
    return -mean_log_likelihood(model, batch)


def _user_validation(model: nn.Module, function: Callable) -> float:
    return float(function(unwrap(model)))


def build_worker(
    config,
    model: nn.Module,
    *,
    adapter: Callable | None = None,
    fitness: Callable | None = None,
    tokenizer=None,
    corpus: Corpus | None = None,
    context: int | None = None,
    validation: Callable | None = None,
    params: str | None = None,
    probe: bool = False,
):
    """A :class:`~evolm.worker.Worker` around any module: corpus (``tokenizer``), parameter space, genome,
    fitness (``fitness`` callable, or the configured corpus terms), center optimiser and validation loss.

    ``model`` may already be an evolm language model (``forward`` gives logits, ``generate`` samples); any
    other module is wrapped in :class:`AdaptedModel` with ``adapter`` and ``context`` (longest sequence its
    forward takes; None: unbounded). ``validation(module) -> float`` is a loss (lower is better); without
    one, the validation loss is the corpus's, when there is a corpus. ``probe``: check on a tiny batch that
    the model keeps the rows of a batch apart and is causal (:mod:`evolm.probe`), when it reads text.
    """
    from evolm.strategies.es import make_center_optimizer
    from evolm.worker import Worker, resolve_device

    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model must be a torch.nn.Module (or a factory returning one), got {type(model).__name__}")
    if context is not None and config.model.context > context:
        raise UsageError(
            f"config field model.context ({config.model.context}) exceeds the model's max_context ({context})"
        )
    if adapter is None and isinstance(model, LanguageModel):
        language_model = model
    else:
        language_model = AdaptedModel(model, adapter, context)
    language_model = language_model.to(device).eval()
    tokenizer = tokenizer or ByteTokenizer()
    if not (callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))):
        raise UsageError(
            f"tokenizer must offer encode(text) -> ids and decode(ids) -> text, got {type(tokenizer).__name__}"
        )
    uses_text = fitness is None or bool(config.data.path) or corpus is not None
    validation_fn = None
    if uses_text:
        corpus = corpus or load_corpus(config, tokenizer)
        vocab = max(tokenizer_vocab(tokenizer), int(corpus.train.max()) + 1)
        check_logits(language_model, vocab, device)
        if probe:
            from evolm.probe import probe_language_model

            probe_language_model(language_model, vocab, device, model_context_of(language_model))
        val_batch = corpus.validation_batch(config.data.val_sequences).to(device)
        validation_fn = functools.partial(_validation_loss, batch=val_batch)
    else:
        corpus = NoCorpus()
        if config.refine.every:
            raise UsageError(
                "config field refine.every: gradient refinement needs text; pass data= (a corpus file) "
                "or leave refinement off with a fitness function"
            )
    if validation is not None:
        validation_fn = functools.partial(_user_validation, function=validation)
    space = param_space(language_model, params or config.genome.params)
    scorer = CallableFitness(fitness) if fitness is not None else build_fitness(config, corpus, device, language_model)
    worker = Worker(
        language_model,
        space,
        make_genome(config, space),
        scorer,
        functools.partial(make_center_optimizer, config=config),
        validation=validation_fn,
    )
    worker.corpus = corpus
    worker.device = device
    worker.config = config
    worker.tokenizer = tokenizer if uses_text else None
    return worker


# --- the picklable worker factory ---------------------------------------------------------------------


class _RecordingFactory:
    """Remembers the last worker it built in this process (the driver's); never pickles it."""

    _driver = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_driver", None)
        return state

    def _record(self, worker):
        self._driver = worker
        return worker


class ModuleWorkerFactory(_RecordingFactory):
    """``factory(config) -> Worker`` for a user's module: what :func:`evolm.engine.run` and every Ray actor call.

    Holds the model factory (or, in-process only, the module itself), adapter, fitness, tokenizer and
    validation; it must pickle (cloudpickle) for Ray. The model factory runs under the run seed, so
    every actor's module starts from the same weights.
    """

    def __init__(self, model, *, adapter=None, fitness=None, tokenizer=None, context=None, validation=None, probe=True):
        self.model = model
        self.adapter = adapter
        self.fitness = fitness
        self.tokenizer = tokenizer
        self.context = context
        self.validation = validation
        # Probe the module on first use only: once the driver's passed, the copies Ray actors unpickle skip it.
        self.probe = probe

    def parts(self) -> dict:
        return {
            "model factory": self.model,
            "adapter": self.adapter,
            "fitness function": self.fitness,
            "tokenizer": self.tokenizer,
            "validation function": self.validation,
        }

    def build_module(self, config) -> nn.Module:
        if isinstance(self.model, nn.Module):
            return self.model
        with scoped_torch_seed(config.seed):
            module = self.model()
        if not isinstance(module, nn.Module):
            raise UsageError(
                f"model factory {getattr(self.model, '__qualname__', self.model)!r} returned a "
                f"{type(module).__name__}, not a torch.nn.Module"
            )
        return module

    def __call__(self, config):
        worker = build_worker(
            config,
            self.build_module(config),
            adapter=self.adapter,
            fitness=self.fitness,
            tokenizer=self.tokenizer,
            context=self.context,
            validation=self.validation,
            probe=self.probe,
        )
        self.probe = False
        return self._record(worker)


class HFWorkerFactory(_RecordingFactory):
    """``factory(config) -> Worker`` for ``config.model.name = "hf:PATH"``, optionally with a user fitness."""

    def __init__(self, fitness=None, validation=None):
        self.fitness = fitness
        self.validation = validation

    def parts(self) -> dict:
        return {"fitness function": self.fitness, "validation function": self.validation}

    def __call__(self, config):
        from evolm.models.hf import hf_worker

        return self._record(hf_worker(config, fitness=self.fitness, validation=self.validation))


def check_picklable(parts: dict, where: str) -> None:
    """Every part must pickle with Ray's cloudpickle (what ships it to actors); else one clear UsageError."""
    try:
        from ray import cloudpickle as pickler
    except ImportError:  # pragma: no cover - ray is a dependency; plain pickle is stricter still
        import pickle as pickler
    for name, value in parts.items():
        if value is None:
            continue
        try:
            pickler.dumps(value)
        except Exception as error:
            label = getattr(value, "__qualname__", None) or type(value).__name__
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise UsageError(
                f"{name} {label!r} cannot be sent to Ray actors ({where}): {first}. It must be importable (defined "
                f"at module level in an importable module) or picklable: move unpicklable state (locks, open files, "
                f"generators, sockets) out of it, or run in-process (evaluator.workers=0)"
            ) from None


# --- configuration ------------------------------------------------------------------------------------


def _settings_overrides(settings: dict) -> list[tuple[str, Any]]:
    overrides = []
    for key, value in settings.items():
        if key in SETTINGS:
            overrides.append((SETTINGS[key], value))
        elif "__" in key:
            overrides.append((key.replace("__", "."), value))
        else:
            raise UsageError(
                f"evolve() got an unknown setting {key!r} (use one of {', '.join(sorted(SETTINGS))}, "
                f"or any config field as section__field, e.g. strategy__sigma=0.05)"
            )
    return overrides


def _as_override(item) -> tuple[str, Any]:
    if isinstance(item, str):
        from evolm.config import parse_assignment

        return parse_assignment(item)
    key, value = item
    return str(key), value


def _validated(config, model_name: str):
    """Validate ``config`` with ``model_name`` (built-in, ``custom`` or ``hf:PATH``) recorded in it."""
    from evolm.config import validate

    config.model.name = model_name
    validate(config)
    return config


def make_config(
    config=None, *, data=None, fitness_terms: str | None = None, overrides=(), settings: dict | None = None
):
    """A :class:`~evolm.config.RunConfig` (validated later, by :func:`evolve`): defaults, then ``config`` (a
    RunConfig, a TOML path or a mapping), ``data``, ``overrides`` (``"key=value"`` strings or pairs) and keyword
    ``settings``, in that order."""
    from evolm.config import RunConfig, _apply_mapping, load_toml, resolve_strategy_defaults, set_dotted

    if config is None:
        result = RunConfig()
    elif isinstance(config, RunConfig):
        result = copy.deepcopy(config)
    elif isinstance(config, dict):
        result = RunConfig()
        _apply_mapping(result, config)
    elif isinstance(config, (str, Path)):
        result = RunConfig()
        _apply_mapping(result, load_toml(config))
    else:
        raise UsageError(f"config must be a RunConfig, a TOML path or a mapping, got {type(config).__name__}")
    pairs = []
    if data is not None:
        pairs.append(("data.path", str(data)))
    if fitness_terms is not None:
        pairs.append(("fitness.terms", fitness_terms))
    pairs += [_as_override(item) for item in overrides] + _settings_overrides(settings or {})
    for key, value in pairs:
        set_dotted(result, key, value)
    resolve_strategy_defaults(result)  # the chosen strategy's working defaults fill what is still unset
    return result


# --- evolve / resume / weights ------------------------------------------------------------------------


def _worker_factory(model, config, *, adapter, fitness, tokenizer, context, validation, probe=True):
    """The picklable worker factory for ``model`` and the name ``config.model.name`` records for it. A built-in
    model (``"gpt"``, ``"lstm"``) gets None: the engine builds it from the config, exactly as ``evolm run`` does."""
    if isinstance(model, str):
        from evolm.models import MODEL_NAMES
        from evolm.models.hf import is_hf

        if model in MODEL_NAMES:
            given = [
                name
                for name, value in (
                    ("adapter=", adapter),
                    ("tokenizer=", tokenizer),
                    ("max_context=", context),
                    ("a fitness function", fitness),
                    ("validation=", validation),
                )
                if value is not None
            ]
            if given:
                raise UsageError(
                    f"the built-in model {model!r} is set up by config fields (model.*, fitness.terms), "
                    f"as for evolm run: drop {', '.join(given)}"
                )
            return None, model
        if not is_hf(model):
            raise UsageError(
                f"model {model!r}: a model given by name must be one of the built-in models "
                f"({', '.join(MODEL_NAMES)}) or hf:PATH (a local Hugging Face checkpoint folder)"
            )
        if adapter is not None or tokenizer is not None or context is not None:
            raise UsageError(
                "a Hugging Face model brings its own output layout, tokenizer and context: "
                "drop adapter=, tokenizer= and max_context="
            )
        return HFWorkerFactory(fitness, validation), model
    if isinstance(model, nn.Module):
        if config.evaluator.workers or config.evaluator.ray_address:
            raise UsageError(
                "on Ray (evaluator.workers > 0) pass the model as a zero-argument factory (its class, or "
                "functools.partial(MyModel, ...)) so that every actor builds its own, not a module instance"
            )
    elif not callable(model):
        raise UsageError(
            f"model must be a torch.nn.Module, a zero-argument factory returning one, a built-in model "
            f"name (gpt, lstm) or 'hf:PATH'; got {type(model).__name__}"
        )
    return ModuleWorkerFactory(
        model,
        adapter=adapter,
        fitness=fitness,
        tokenizer=tokenizer,
        context=context,
        validation=validation,
        probe=probe,
    ), CUSTOM_MODEL


def _check_ray_ready(factory, config) -> None:
    """On Ray, every part the actors need must pickle: checked before any Ray runtime starts."""
    if factory is None or not (config.evaluator.workers or config.evaluator.ray_address):
        return
    where = f"evaluator.workers={config.evaluator.workers}" if config.evaluator.workers else "evaluator.ray_address"
    check_picklable(factory.parts(), where)
    check_picklable({"worker factory": factory}, where)


def evolve(
    model,
    *,
    data=None,
    fitness=None,
    adapter=None,
    tokenizer=None,
    max_context=None,
    validation=None,
    config=None,
    out=None,
    overrides=(),
    overwrite=False,
    progress=False,
    log=print,
    probe=True,
    **settings,
) -> dict:
    """Evolve ``model``; returns the run summary (also in ``OUT/summary.json``).

    - ``model``: an ``nn.Module`` (evolved in place), a zero-argument factory returning one (needed for Ray),
      a built-in model's name (``"gpt"``, ``"lstm"``, set up by ``model.*`` settings as with ``evolm run``),
      or ``"hf:PATH"`` (a local Hugging Face causal LM and its tokenizer).
    - ``data``: a UTF-8 text file or folder of ``.txt`` files (default: the embedded corpus when the fitness
      needs text).
    - ``fitness``: None (the configured terms, ``fitness.terms``), a terms string (``"likelihood=1,self=0.5"``),
      or a callable ``fitness(module) -> float`` (higher is better; a ``generation`` parameter receives
      the generation number, to share one batch across a generation).
    - ``adapter``: the module's output -> logits ``(batch, time, vocab)`` (:func:`time_major`,
      :data:`time_major_io`, :func:`logits_from`).
    - ``tokenizer``: ``encode(text) -> ids`` and ``decode(ids) -> text`` with ``vocab_size`` (default: UTF-8 bytes).
    - ``max_context``: the longest sequence the module's forward takes (None: unbounded, like an LSTM);
      the training window is the setting ``context`` (``model.context``, default 64).
    - ``validation``: ``validation(module) -> float``, a loss logged each generation (default: the corpus's).
    - ``config`` (RunConfig, TOML path or mapping), ``overrides`` (``"key=value"``) and ``**settings``
      (``generations=50``, ``population_size=32``, ``sigma=0.02``, ``workers=2``, or any ``section__field``).
    - ``out``: the run folder (default ``runs/<name>-<time>``); ``overwrite``: replace an earlier run there;
      ``progress``: a progress bar; ``log``: where messages go.
    - ``probe``: before the run, a module that reads text is checked on a tiny batch (:mod:`evolm.probe`): the
      rows of a batch must not affect each other, and no position may see a later token; a module that fails
      is refused with one UsageError. ``probe=False`` skips the check.
    """
    from evolm.engine import default_run_dir, run

    terms = fitness if isinstance(fitness, str) else None
    user_fitness = None if isinstance(fitness, str) else fitness
    if user_fitness is not None and not callable(user_fitness):
        raise UsageError(
            f"fitness must be a callable fitness(model) -> float or a terms string, got {type(fitness).__name__}"
        )
    run_config = make_config(config, data=data, fitness_terms=terms, overrides=overrides, settings=settings)
    factory, model_name = _worker_factory(
        model,
        run_config,
        adapter=adapter,
        fitness=user_fitness,
        tokenizer=tokenizer,
        context=max_context,
        validation=validation,
        probe=probe,
    )
    _validated(run_config, model_name)
    if user_fitness is not None and run_config.strategy.name == "nsga2":
        raise UsageError(
            "config field strategy.name: nsga2 scores each configured fitness term as an objective; "
            "with a fitness function use es, ga or cmaes"
        )
    _check_ray_ready(factory, run_config)
    out_dir = Path(out) if out else default_run_dir(run_config)  # runs/<strategy>-<model>-seed<seed>-<time>
    summary = run(run_config, out_dir=out_dir, overwrite=overwrite, progress=progress, log=log, worker_factory=factory)
    return _finish(summary, factory)


def resume(
    run_dir,
    model=None,
    *,
    fitness=None,
    adapter=None,
    tokenizer=None,
    max_context=None,
    validation=None,
    progress=False,
    log=print,
    probe=True,
) -> dict:
    """Continue an interrupted run from its last checkpoint: any run ``evolm run`` or :func:`evolve` started.

    A run of a built-in model (gpt, lstm) or of ``hf:PATH`` needs only ``run_dir`` (its ``config.toml`` names
    the model); a module given to :func:`evolve` needs the same model (factory), adapter, fitness and
    tokenizer again, and is probed as :func:`evolve` probes it (``probe=False`` skips that)."""
    from evolm.engine import resume as engine_resume
    from evolm.sampling import load_run_config

    config = load_run_config(run_dir)
    recorded = config.model.name
    if model is None:
        if recorded == CUSTOM_MODEL:
            raise UsageError(
                f"run folder {run_dir} evolved a module given to evolm.evolve: pass the same model "
                f"(factory) to resume(), e.g. evolm.resume(run_dir, MyModel, adapter=...)"
            )
        model = recorded
    elif (isinstance(model, str) and recorded == CUSTOM_MODEL) or (recorded != CUSTOM_MODEL and model != recorded):
        what = "a module given to evolm.evolve" if recorded == CUSTOM_MODEL else repr(recorded)
        raise UsageError(
            f"run folder {run_dir} evolved {what} (its config.toml), not {model!r}: "
            + ("pass that module (factory)" if recorded == CUSTOM_MODEL else "leave model= out")
        )
    factory, _ = _worker_factory(
        model,
        config,
        adapter=adapter,
        fitness=fitness,
        tokenizer=tokenizer,
        context=max_context,
        validation=validation,
        probe=probe,
    )
    _check_ray_ready(factory, config)
    return _finish(engine_resume(run_dir, progress=progress, log=log, worker_factory=factory), factory)


def _finish(summary: dict, factory) -> dict:
    """After the engine (which saved, plotted and sampled the final model through the worker): a module
    passed in ends holding the final weights of ``model.safetensors``."""
    driver = getattr(factory, "_driver", None)
    if driver is not None:
        load_weights(driver.model, summary["run_dir"])
    return summary


def sample_from_worker(
    worker, genes=None, prompt: str = "\n", tokens: int = 200, temperature: float = 0.8, seed: int = 0
) -> str | None:
    """Text the worker's model writes after ``prompt`` with ``genes`` applied; None when it has no tokenizer
    (a fitness-function run without text) or cannot generate."""
    tokenizer = getattr(worker, "tokenizer", None)
    if tokenizer is None or not hasattr(worker.model, "generate"):
        return None
    prompt_tokens = torch.as_tensor(tokenizer.encode(prompt or "\n"), dtype=torch.long).reshape(1, -1)
    if prompt_tokens.numel() == 0:
        return None
    device = getattr(worker, "device", "cpu")
    generator = torch.Generator().manual_seed(seed % 2**63)
    with torch.no_grad(), worker.applied(genes) as model:
        new_tokens = model.generate(prompt_tokens.to(device), tokens, float(temperature), generator)
    return tokenizer.decode(new_tokens[0].cpu())


def load_weights(module: nn.Module, run_dir, weights: str | Path | None = None) -> nn.Module:
    """Load a run's ``model.safetensors`` (or ``weights``) into ``module``: an evolm wrapper, or the user's own
    module (the wrapper's ``module.``/``model.`` prefix is dropped). Strict: every name and shape must match."""
    from safetensors.torch import load_file

    path = Path(weights) if weights is not None else Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise UsageError(f"weights file {path} does not exist (has the run finished?)")
    state = load_file(str(path), device="cpu")
    expected = set(module.state_dict())
    if set(state) != expected:
        for prefix in (AdaptedModel.inner_prefix, "model."):
            if all(name.startswith(prefix) for name in state):
                stripped = {name[len(prefix) :]: tensor for name, tensor in state.items()}
                if set(stripped) == expected:
                    state = stripped
                    break
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or ["mismatch"])[0][:200]
        raise UsageError(f"weights file {path} does not match the module: {first}") from None
    return module


__all__ = [
    "AdaptedModel",
    "CallableFitness",
    "ModuleWorkerFactory",
    "TimeMajorIO",
    "build_worker",
    "check_picklable",
    "evolve",
    "load_corpus",
    "load_weights",
    "logits_from",
    "make_config",
    "param_space",
    "resume",
    "sample_from_worker",
    "time_major",
    "time_major_io",
]
