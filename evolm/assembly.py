"""Assembling a worker: a run config, or a user's module, becomes a :class:`~evolm.worker.Worker`.

Every way into a run meets here: :func:`worker_from_config` for the built-in models (``gpt``,
``lstm``) and ``hf:PATH`` checkpoints, :func:`build_worker` for any ``nn.Module`` with an adapter and
a fitness (a terms string or a user's callable, :class:`CallableFitness`), and the picklable worker
factories that the engine, the threads evaluator and every Ray actor call to build identical workers
(:class:`ModuleWorkerFactory`, :class:`HFWorkerFactory`). The API, the CLI and the engine import this
module; it imports only what lies below it (models, data, genome, fitness, worker).
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from evolm.adapters import AdaptedModel, check_logits, param_space, unwrap
from evolm.data import ByteTokenizer, Corpus, load_corpus_text
from evolm.errors import UsageError
from evolm.fitness import build_fitness, finite_or_worst, mean_log_likelihood
from evolm.genome import ParamSpace, make_genome
from evolm.models import LanguageModel, build_initial_model, resolve_device
from evolm.models.base import model_context
from evolm.models.hf import build_hf, resolved_params
from evolm.population_writing import configure_batched_pass
from evolm.probe import probe_language_model
from evolm.seeding import scoped_torch_seed
from evolm.strategies.optimizers import make_center_optimizer
from evolm.tasks.fitness import task_fitness, uses_task
from evolm.worker import Worker

CUSTOM_MODEL = "custom"  # config.model.name of a run whose module came through the Python API


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


def worker_from_config(config, corpus: Corpus | None = None, reward_function=None) -> Worker:
    """The worker of a run config: a built-in model (``gpt``, ``lstm``) on bytes with the configured corpus,
    genome and fitness terms, or a local Hugging Face checkpoint (``hf:PATH``) with its own tokenizer."""
    if config.model.name.startswith("hf:"):
        return hf_worker(config, corpus, reward_function=reward_function)
    if config.model.name == CUSTOM_MODEL:
        raise UsageError(
            "config field model.name: a custom model is evolved through the Python API, which "
            "supplies the module: evolm.evolve(model, ...), or evolm.resume(run_dir, model, ...)"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model = build_initial_model(config.model, config.seed).to(device).eval()
    fitness: Any
    if uses_task(config):
        fitness, corpus = task_fitness(config, model, ByteTokenizer(), device, reward_function)
    else:
        corpus = corpus or Corpus.load(config.data.path or None, config.model.context, config.data.val_fraction)
        fitness = build_fitness(config, corpus, device, model)
    space = ParamSpace(model, config.genome.params)
    val_batch = corpus.validation_batch(config.data.val_sequences).to(device)
    worker = Worker(
        model,
        space,
        make_genome(config, space),
        fitness,
        functools.partial(make_center_optimizer, config=config),
        validation=functools.partial(_validation_loss, batch=val_batch),
    )
    worker.corpus = corpus
    worker.device = device
    worker.config = config
    worker.tokenizer = ByteTokenizer()
    configure_batched_pass(worker, config)
    return worker


def hf_worker(config, corpus=None, *, fitness=None, validation=None, reward_function=None) -> Worker:
    """The worker of a run config whose ``model.name`` is ``hf:PATH``: the checkpoint, the corpus tokenized
    by its tokenizer, the default (or configured) parameter subset (:mod:`evolm.models.hf`)."""
    model, tokenizer = build_hf(config)
    return build_worker(
        config,
        model,
        fitness=fitness,
        tokenizer=tokenizer,
        corpus=corpus,
        validation=validation,
        params=resolved_params(config, model),
        reward_function=reward_function,
    )


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
    reward_function: Callable | None = None,
):
    """A :class:`~evolm.worker.Worker` around any module: corpus (``tokenizer``), parameter space, genome,
    fitness (``fitness`` callable, or the configured corpus terms), center optimiser and validation loss.

    ``model`` may already be an evolm language model (``forward`` gives logits, ``generate`` samples); any
    other module is wrapped in :class:`AdaptedModel` with ``adapter`` and ``context`` (longest sequence its
    forward takes; None: unbounded). ``validation(module) -> float`` is a loss (lower is better); without
    one, the validation loss is the corpus's, when there is a corpus. ``probe``: check on a tiny batch that
    the model keeps the rows of a batch apart and is causal (:mod:`evolm.probe`), when it reads text.
    """
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
    if fitness is not None and uses_task(config):
        raise UsageError("a fitness function and a task (task.name, task.reward) are two fitnesses: give one")
    uses_text = fitness is None or bool(config.data.path) or corpus is not None
    validation_fn = None
    scorer: Any = None
    if uses_task(config):  # the task's own text (or the configured corpus) and its reward
        scorer, corpus = task_fitness(config, language_model, tokenizer, device, reward_function)
    if uses_text:
        text = corpus or load_corpus(config, tokenizer)
        vocab = max(tokenizer_vocab(tokenizer), int(text.train.max()) + 1)
        check_logits(language_model, vocab, device)
        if probe:
            probe_language_model(language_model, vocab, device, model_context(language_model))
        val_batch = text.validation_batch(config.data.val_sequences).to(device)
        validation_fn = functools.partial(_validation_loss, batch=val_batch)
        source: Corpus | NoCorpus = text
    else:
        source = NoCorpus()
        if config.refine.every:
            raise UsageError(
                "config field refine.every: gradient refinement needs text; pass data= (a corpus file) "
                "or leave refinement off with a fitness function"
            )
    if validation is not None:
        validation_fn = functools.partial(_user_validation, function=validation)
    space = param_space(language_model, params or config.genome.params)
    if scorer is None:
        scorer = (
            CallableFitness(fitness) if fitness is not None else build_fitness(config, source, device, language_model)
        )
    worker = Worker(
        language_model,
        space,
        make_genome(config, space),
        scorer,
        functools.partial(make_center_optimizer, config=config),
        validation=validation_fn,
    )
    worker.corpus = source
    worker.device = device
    worker.config = config
    worker.tokenizer = tokenizer if uses_text else None
    return worker


# --- the picklable worker factories ---------------------------------------------------------------------


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

    def __init__(
        self,
        model,
        *,
        adapter=None,
        fitness=None,
        tokenizer=None,
        context=None,
        validation=None,
        probe=True,
        reward=None,
    ):
        self.model = model
        self.reward = reward  # a task's reward function given through the API
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
            "reward function": self.reward,
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
            reward_function=self.reward,
        )
        self.probe = False
        return self._record(worker)


class HFWorkerFactory(_RecordingFactory):
    """``factory(config) -> Worker`` for ``config.model.name = "hf:PATH"``, optionally with a user fitness."""

    def __init__(self, fitness=None, validation=None, reward=None):
        self.fitness = fitness
        self.validation = validation
        self.reward = reward

    def parts(self) -> dict:
        return {
            "fitness function": self.fitness,
            "validation function": self.validation,
            "reward function": self.reward,
        }

    def __call__(self, config):
        worker = hf_worker(config, fitness=self.fitness, validation=self.validation, reward_function=self.reward)
        return self._record(worker)


class TaskWorkerFactory(_RecordingFactory):
    """``factory(config) -> Worker`` for a built-in model (gpt, lstm) on a task whose reward is a Python callable."""

    def __init__(self, reward):
        self.reward = reward

    def parts(self) -> dict:
        return {"reward function": self.reward}

    def __call__(self, config):
        return self._record(worker_from_config(config, reward_function=self.reward))
