"""A worker: the corpus, the model, its parameter space, genome and fitness, built once from the run config.

The in-process evaluator holds one worker; each Ray actor holds its own. A worker receives genes
and a generation number, never weights, and applies strategy updates (seeds and coefficients)
to its own model, so every worker's model stays identical.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import torch

from evolm.fitness import Written, finite_or_worst
from evolm.population import population_log_likelihood
from evolm.population_writing import population_write
from evolm.step_sizes import StepSizes


class Worker:
    """Scores genomes against a model in place. Build one for the configured language model with
    :func:`evolm.assembly.worker_from_config`, or from your own pieces (any module, parameter space, genome
    and fitness: :func:`evolm.assembly.build_worker`)."""

    def __init__(self, model, space, genome, fitness, optimizer_factory, validation=None) -> None:
        """``fitness`` follows :class:`evolm.fitness.Fitness`'s interface (``context``, ``__call__``, ``tokens``, ``report``)."""
        self.model = model
        self.space = space
        self.genome = genome
        self.fitness = fitness
        self._optimizer_factory = optimizer_factory
        self._validation = validation
        self.forward_tokens = 0
        self._optimizer = None
        self._batch_generation: int | None = None
        self._batch: Any = None
        self.population_chunk = 0  # > 1: score low-rank genomes this many at a time in one batched pass
        self.likelihood_weight = 1.0  # the batched pass's weight on the likelihood term
        # Set by evolm.assembly: what the run reads (corpus, tokenizer: None for a fitness function without
        # text), where the model lives, the run config; and by the engine, the factory that built this worker.
        self.corpus: Any = None
        self.tokenizer: Any = None
        self.device = torch.device("cpu")
        self.config: Any = None
        self.factory: Callable | None = None

    def center_optimizer(self):
        """The optimiser of the base (center) weights, made on first use by strategies that step it."""
        if self._optimizer is None:
            self._optimizer = self._optimizer_factory(self.space.parameters)
        return self._optimizer

    def fitness_context(self, generation: int):
        """What the whole generation shares (text batch, prompts, seeds): built once per generation."""
        if self._batch_generation != generation:
            self._batch = self.fitness.context(generation)
            self._batch_generation = generation
        return self._batch

    @torch.no_grad()
    def evaluate(self, genes_list, generation: int) -> list:
        """Fitness of each genome: apply in place, score, restore the base weights. Fitness tuples, or
        :class:`evolm.fitness.Scored` results when a term needs the whole population (novelty)."""
        context = self.fitness_context(generation)
        tokens = self.fitness.tokens(context)
        # Novelty is finished on the driver against the whole population (evolm.fitness.with_novelty).
        score = self.fitness.scored if getattr(self.fitness, "needs_population", False) else self.fitness
        results: list = []
        if self.population_chunk:
            writing = self.fitness.writing(context) if hasattr(self.fitness, "writing") else None
            for start in range(0, len(genes_list), self.population_chunk):
                chunk = genes_list[start : start + self.population_chunk]
                if writing is None:  # likelihood alone: the whole chunk scored in one batched pass
                    scores = population_log_likelihood(self.model, context.batch, self.genome, chunk)
                    results.extend((finite_or_worst(self.likelihood_weight * score),) for score in scores)
                    continue
                # The chunk writes in one batched pass; each is then scored on what it wrote, its genes
                # applied in place only when a term reads the candidate again.
                written = population_write(self.model, self.genome, chunk, writing)
                reads_model = self.fitness.reads_model_after_writing
                for genes, tokens_written in zip(chunk, written):
                    with self.applied(genes if reads_model else None) as model:
                        results.append(score(model, context, written=Written(tokens_written)))
            self.forward_tokens += tokens * len(genes_list)
            return results
        for genes in genes_list:
            self.genome.apply(self.model, genes)
            try:
                results.append(score(self.model, context))
            finally:
                self.genome.undo(self.model, genes)
            self.forward_tokens += tokens
        return results

    def apply_update(self, update) -> None:
        if update is not None:
            update.apply(self)

    @contextlib.contextmanager
    def applied(self, genes):
        """The model with ``genes`` applied for the duration of the block (None: the base itself)."""
        if genes is None:
            yield self.model
            return
        self.genome.apply(self.model, genes)
        try:
            yield self.model
        finally:
            self.genome.undo(self.model, genes)

    @torch.no_grad()
    def validation_loss(self, genes=None) -> float:
        if self._validation is None:
            return float("nan")
        with self.applied(genes) as model:
            return self._validation(model)

    @torch.no_grad()
    def report(self, generation: int, genes=None) -> dict:
        """The fitness's per-generation figures (self-score, distinct-2, ...) of the reported model."""
        with self.applied(genes) as model:
            return self.fitness.report(model, generation)

    def release_search_state(self) -> None:
        """Drop what only the search needs once a run is over and saved: the undo snapshot and the
        center optimiser's moments (3x the evolving weights with Adam). The closing plot and sample
        then run beside one model, not on top of the search's peak."""
        self._optimizer = None
        self.space.drop_snapshot()

    def optimizer_state(self) -> dict | None:
        """The center optimiser's state dict (references, no copy; None before its first step or for sgd).
        A genome with step sizes (separable NES) adds them: ``{"center": that, "step_sizes": ...}``."""
        state = None if self._optimizer is None else self._optimizer.state_dict()
        sizes = getattr(self.genome, "step_sizes", None)
        return state if sizes is None else {"center": state, "step_sizes": sizes.state_dict()}

    def sync_state(self) -> dict:
        """Base weights and optimiser state: what a drifted or replacement worker needs to catch up
        (a copy of the weights: for shipping to another process; a checkpoint wants :meth:`optimizer_state`)."""
        return {
            "tensors": [t.detach().cpu().clone() for t in self.space.tensors],
            "optimizer": self.optimizer_state(),
        }

    def load_sync_state(self, state: dict) -> None:
        for tensor, value in zip(self.space.tensors, state["tensors"]):
            tensor.copy_(value)
        self.space.commit()
        optimizer = state["optimizer"]
        if isinstance(optimizer, dict) and "step_sizes" in optimizer:
            self.genome.step_sizes = StepSizes.from_state_dict(self.space, optimizer["step_sizes"])
            optimizer = optimizer["center"]
        if optimizer is not None:
            self.center_optimizer().load_state_dict(optimizer)

    def checksum(self) -> str:
        """A cheap fingerprint of the base weights, to check that workers agree: their raw bytes,
        hashed tensor by tensor (any dtype, bfloat16 included; tensors on a GPU come over in one copy),
        then the genome's step sizes if it has any (separable NES)."""
        digest = hashlib.blake2b(digest_size=8)
        sizes = getattr(self.genome, "step_sizes", None)
        tensors = [*self.space.tensors, *(sizes.tensors() if sizes is not None else ())]
        devices = {t.device for t in tensors}
        if len(devices) == 1 and devices.pop().type != "cpu":
            # One copy to the host for all of them (the same bytes in the same order: the same digest).
            tensors = [torch.cat([t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors])]
        for tensor in tensors:
            digest.update(tensor_bytes(tensor))
        return digest.hexdigest()


def tensor_bytes(tensor: torch.Tensor):
    """The tensor's raw bytes in row-major order as a buffer (no copy for a contiguous host tensor).

    Viewed as uint8 rather than through ``.numpy()``, which has no bfloat16."""
    host = tensor.detach()
    if host.device.type != "cpu":
        host = host.cpu()
    return host.contiguous().reshape(-1).view(torch.uint8).numpy()
