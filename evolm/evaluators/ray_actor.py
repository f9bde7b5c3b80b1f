"""What runs inside a Ray actor: one worker built from the run config (never from shipped weights),
and how genes and results are packed for the trip. Imported by :mod:`evolm.evaluators.ray`.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import ray
import torch
from ray import cloudpickle

from evolm.errors import UsageError


def payload_bytes(value) -> int:
    """Bytes ``value`` takes once serialised: what crosses the process boundary for it."""
    return len(cloudpickle.dumps(value))


def pack(genes: list):
    """A chunk's genes as they travel: vector genomes (float32 arrays of one length) as one 2-D array,
    4 bytes a gene, instead of one pickled object per array; other genomes as they are."""
    if genes and all(isinstance(g, np.ndarray) for g in genes) and len({g.shape for g in genes}) == 1:
        return np.stack(genes)
    return genes


class EvaluationActor:
    """A Ray actor holding one worker, built from the run config (never from shipped weights) by the
    driver worker's factory (:func:`evolm.engine.make_worker` records it: ``worker_from_config`` unless the
    run was given another), so every actor's worker is built exactly as the driver's was."""

    def __init__(self, config, threads: int, device: str, factory):
        """``device``: where the worker keeps its model, ``cuda`` for an actor given GPUs (the ones Ray made
        visible to it: ``cuda`` is its own share) or ``cpu``; it replaces the config's ``device``."""
        torch.set_num_threads(threads)
        config = copy.deepcopy(config)
        config.threads = threads
        config.device = device
        self.worker: Any = None
        self.error: tuple[str, str] | None = None
        try:
            self.worker = factory(config)
        except UsageError as error:  # e.g. the data path is missing on this node: the driver says so
            self.error = ("usage", str(error))
        except Exception as error:
            self.error = ("other", f"{type(error).__name__}: {error}")

    def ready(self) -> dict:
        """Where the actor runs (node, process, the GPUs Ray gave it) and its weights' checksum, or the
        error that kept it from building its worker."""
        node_id = ray.get_runtime_context().get_node_id()
        if self.error is not None:
            return {"node_id": node_id, "error": self.error}
        return {
            "node_id": node_id,
            "pid": os.getpid(),
            "gpu_ids": [str(gpu) for gpu in ray.get_gpu_ids()],
            "device": str(getattr(self.worker, "device", "cpu")),
            "checksum": self.worker.checksum(),
        }

    def evaluate(self, genes_list, generation: int):
        """Fitness tuples of the chunk and the forward tokens they took."""
        if isinstance(genes_list, np.ndarray) and not genes_list.flags.writeable:
            genes_list = genes_list.copy()  # Ray hands arrays over read-only (zero copy); torch wants them writable
        before = self.worker.forward_tokens
        fitnesses = self.worker.evaluate(genes_list, generation)
        return fitnesses, self.worker.forward_tokens - before

    def apply_update(self, update) -> str:
        self.worker.apply_update(update)
        return self.worker.checksum()

    def sync_state(self) -> dict:
        return self.worker.sync_state()

    def load_sync_state(self, state) -> str:
        self.worker.load_sync_state(state)
        return self.worker.checksum()
