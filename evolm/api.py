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
from pathlib import Path
from typing import Any

from torch import nn

from evolm.adapters import (  # noqa: F401 - re-exported: evolm.api.time_major etc. stay where users import them
    AdaptedModel,
    ModelInfo,
    TimeMajorIO,
    check_logits,
    default_logits,
    logits_from,
    param_space,
    time_major,
    time_major_io,
    unwrap,
)
from evolm.assembly import (  # noqa: F401 - re-exported: the Python API's names stay where users import them
    CUSTOM_MODEL,
    CallableFitness,
    HFWorkerFactory,
    ModuleWorkerFactory,
    TaskWorkerFactory,
    build_worker,
    load_corpus,
)
from evolm.config import RunConfig, resolve_strategy_defaults
from evolm.config import validate as validate_config
from evolm.config_io import apply_mapping, load_toml, parse_assignment, set_dotted
from evolm.engine import resume as engine_resume
from evolm.engine import run
from evolm.errors import UsageError
from evolm.evaluators.shipping import check_picklable
from evolm.models import MODEL_NAMES
from evolm.models.hf import is_hf
from evolm.rundir import default_run_dir
from evolm.sampling import load_run_config, load_weights, sample_from_worker  # noqa: F401 - re-exported

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
    "init": "model.init",
    "task": "task.name",
    "prompts": "task.prompts",
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
        return parse_assignment(item)
    key, value = item
    return str(key), value


def _validated(config, model_name: str):
    """Validate ``config`` with ``model_name`` (built-in, ``custom`` or ``hf:PATH``) recorded in it."""
    config.model.name = model_name
    validate_config(config)
    return config


def make_config(
    config=None, *, data=None, fitness_terms: str | None = None, overrides=(), settings: dict | None = None
):
    """A :class:`~evolm.config.RunConfig` (validated later, by :func:`evolve`): defaults, then ``config`` (a
    RunConfig, a TOML path or a mapping), ``data``, ``overrides`` (``"key=value"`` strings or pairs) and keyword
    ``settings``, in that order."""
    if config is None:
        result = RunConfig()
    elif isinstance(config, RunConfig):
        result = copy.deepcopy(config)
    elif isinstance(config, dict):
        result = RunConfig()
        apply_mapping(result, config)
    elif isinstance(config, (str, Path)):
        result = RunConfig()
        apply_mapping(result, load_toml(config))
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


def _worker_factory(model, config, *, adapter, fitness, tokenizer, context, validation, probe=True, reward=None):
    """The picklable worker factory for ``model`` and the name ``config.model.name`` records for it. A built-in
    model (``"gpt"``, ``"lstm"``) gets None: the engine builds it from the config, exactly as ``evolm run`` does."""
    if isinstance(model, str):
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
            return (None if reward is None else TaskWorkerFactory(reward)), model
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
        return HFWorkerFactory(fitness, validation, reward), model
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
        reward=reward,
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
    reward=None,
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
    - ``task``: optimise a task's reward instead (``"self-feedback"``, ``"arithmetic"``, ``"python-lines"``);
      ``reward``: your own ``reward(prompts, completions) -> list[float]`` (a callable, or ``"module:function"``),
      on ``prompts=`` (a file, one prompt per line) or windows of the corpus.
    - ``probe``: before the run, a module that reads text is checked on a tiny batch (:mod:`evolm.probe`): the
      rows of a batch must not affect each other, and no position may see a later token; a module that fails
      is refused with one UsageError. ``probe=False`` skips the check.
    """
    terms = fitness if isinstance(fitness, str) else None
    user_fitness = None if isinstance(fitness, str) else fitness
    if user_fitness is not None and not callable(user_fitness):
        raise UsageError(
            f"fitness must be a callable fitness(model) -> float or a terms string, got {type(fitness).__name__}"
        )
    reward_function = None
    if isinstance(reward, str):
        settings["task__reward"] = reward
    elif reward is not None:
        if not callable(reward):
            raise UsageError(
                f"reward must be a callable reward(prompts, completions) or 'module:function', got {reward!r}"
            )
        reward_function = reward
        settings.setdefault("task", "reward")
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
        reward=reward_function,
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
    reward=None,
) -> dict:
    """Continue an interrupted run from its last checkpoint: any run ``evolm run`` or :func:`evolve` started.

    A run of a built-in model (gpt, lstm) or of ``hf:PATH`` needs only ``run_dir`` (its ``config.toml`` names
    the model); a module given to :func:`evolve` needs the same model (factory), adapter, fitness and
    tokenizer again, and is probed as :func:`evolve` probes it (``probe=False`` skips that)."""
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
        reward=reward,
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
