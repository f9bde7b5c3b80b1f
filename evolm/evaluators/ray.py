"""Fitness evaluation on Ray actors: each actor builds its own worker from the run config once,
then receives only genes and a generation number (seeds, not weights).

Ray is imported only in evolm.evaluators (here: ray_actor for the actor, ray_cluster for the runtime,
dispatch for a generation's chunks). Individuals are split into chunks that keep every actor busy;
results are written back by index, so a Ray run reports exactly what the in-process evaluator reports
for the same seed. Strategy updates travel as the update object itself (seeds and coefficients);
every actor applies it and answers with a checksum of its base weights, which the driver compares
with its own worker's, resynchronising a drifted actor. An actor lost mid-generation has its
unfinished chunks run again on the others, and a replacement, synchronised from the driver's worker,
joins when the cluster has room for it. Weights changed on the driver other than by an update (a
restored checkpoint) are noticed by checksum and loaded into every actor.
"""

from __future__ import annotations

import gc
import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions
import torch

from evolm.assembly import worker_from_config
from evolm.errors import UsageError
from evolm.evaluators.dispatch import (  # noqa: F401 (PIPELINE_DEPTH, CHUNKS_PER_ACTOR: public here too)
    ACTOR_LOST,
    CHUNKS_PER_ACTOR,
    PIPELINE_DEPTH,
    ChunkDispatch,
    dumps,
    values_of,
    wire_bytes,
)
from evolm.evaluators.ray_actor import EvaluationActor, pack, payload_bytes  # noqa: F401 (payload_bytes: public)
from evolm.evaluators.ray_cluster import (
    actor_count,
    actor_device,
    actor_options,
    check_gpus_per_worker,
    connect,
    startup_error,
    task_error,
)
from evolm.individuals import genes_of

# Consecutive failed replacement starts after which evolm stops replacing (a config that cannot build).
MAX_FAILED_STARTS = 3

log = logging.getLogger(__name__)
_ACTOR_CLASS: Any = None  # ChunkEvaluationActor as a Ray actor class, made once


class ChunkEvaluationActor(EvaluationActor):
    """The actor RayEvaluator starts: an :class:`EvaluationActor` whose chunk call is cheap for the driver,
    which makes a thousand of them a generation at 1,000 actors. Ray serialises and tracks every top-level
    argument on its own (about 20 µs each) and walks nested tuples (every seed gene's) one by one: the
    chunk travels as one argument, pickled by evolm, and its size is the driver's byte count."""

    def evaluate_chunk(self, work: bytes) -> bytes:
        """:meth:`evaluate` of ``pickle.loads(work)`` (``(genes_list, generation)``), its result pickled."""
        return dumps(self.evaluate(*pickle.loads(work)))


@dataclass(eq=False)
class _Slot:
    """One actor and what the driver knows of it."""

    actor: Any
    ready_ref: Any = None  # pending ``ready()`` while the actor starts; None once it serves
    node_id: str = ""
    in_flight: set = field(default_factory=set)
    lost: bool = False

    @property
    def serving(self) -> bool:
        return self.ready_ref is None


class RayEvaluator(ChunkDispatch):
    """Evaluates on Ray actors; same interface as :class:`~evolm.evaluators.local.LocalEvaluator`.

    ``on_chunk_done(evaluator, generation, chunk_index)``, when set, is called after each chunk's
    result is stored (a test hook: it lets a test kill an actor in the middle of a generation).
    ``actor_class``, when given, stands in for ``ray.remote(ChunkEvaluationActor)`` (same ``options(...)
    .remote(...)`` call, same methods): :class:`evolm.evaluators.simulated.SimulatedActors` plays
    many actors on a few processes to measure the driver at scale.
    """

    def __init__(self, config, worker, actor_class=None):
        self.config = config
        self.worker = worker
        self._actor_class = actor_class
        settings = config.evaluator
        self.threads = max(1, settings.threads_per_worker)
        self.gpus = check_gpus_per_worker(float(settings.gpus_per_worker))
        self.device = actor_device(self.gpus)
        driver_device = getattr(worker, "device", None) or next(worker.model.parameters()).device
        driver_type = torch.device(driver_device).type
        if driver_type != self.device:
            # Noise is drawn on the device that holds the weights and CPU and CUDA generators differ:
            # every copy of the model that must agree (driver, actors) uses one device type.
            raise UsageError(
                f"config field evaluator.gpus_per_worker: {settings.gpus_per_worker:g} puts Ray actors on "
                f"{self.device} but the driver's model is on {driver_type}; use one device type per run "
                f"(device=cuda with gpus_per_worker > 0, or device=cpu with gpus_per_worker=0)"
            )
        self._factory = getattr(worker, "factory", None) or worker_from_config  # it must pickle
        self._owns_runtime = connect(settings, settings.workers * self.threads)
        self.target = actor_count(settings.workers, self.threads, self.gpus)
        # Chunks start at multiples of the worker's batched-pass size, so each actor forms the same
        # sub-batches as the in-process evaluator would: the same shapes, the same arithmetic.
        self._batch_multiple = max(1, getattr(worker, "population_chunk", 0) or 1)
        self._slots: list[_Slot] = []
        self._starting: dict = {}  # ready() ref -> slot, for the actors still starting
        self._failed_starts = 0
        self.on_chunk_done = None
        self._tokens = 0
        self._bytes = 0  # since the start of the current generation's evaluate
        self._bytes_total = 0
        self._individuals = 0
        self._seconds = 0.0
        self.actors_replaced = 0
        self.chunks_rerun = 0
        self.resyncs = 0
        self.wait_seconds = 0.0  # the driver blocked on actors (a benchmark's driver-share figure)
        # The driver's checksum when the actors were last known to match it: a change made to the
        # driver's weights outside apply_update (a restored checkpoint, say) is caught by comparing.
        self._driver_checksum = worker.checksum()
        try:
            for _ in range(self.target):
                self._start_actor()
            self._await_starting(block=True)
            if not any(slot.serving for slot in self._slots):
                raise RuntimeError("no Ray actor could be started")
        except BaseException:
            self.close()
            raise
        # Each full collection walks every object the driver holds (about 240,000 with torch and Ray:
        # 0.1 s), and a population of 10,000 sets one off every other generation. What lives now lives
        # for the run (modules, model, actors): the collector skips it until close() (garbage still frees).
        gc.collect()
        gc.freeze()
        self._frozen = True

    # ---- actors --------------------------------------------------------------------------------

    def _start_actor(self) -> None:
        # max_restarts=0: a process Ray restarted would rebuild its worker from the config, i.e. at
        # the initial weights, and silently score genes against a stale center. A replacement made
        # here is checked (checksum) and synchronised before it receives any work.
        global _ACTOR_CLASS
        if _ACTOR_CLASS is None:
            _ACTOR_CLASS = ray.remote(ChunkEvaluationActor)
        actor_class = self._actor_class if self._actor_class is not None else _ACTOR_CLASS
        actor = actor_class.options(**actor_options(self.threads, self.gpus)).remote(
            self.config, self.threads, self.device, self._factory
        )
        slot = _Slot(actor=actor, ready_ref=actor.ready.remote())
        self._slots.append(slot)
        self._starting[slot.ready_ref] = slot

    def _replace(self) -> None:
        """Start actors until the target is met again; Ray places each when resources allow."""
        while len(self._slots) < self.target and self._failed_starts < MAX_FAILED_STARTS:
            self._start_actor()
            self.actors_replaced += 1

    def _lose(self, slot: _Slot) -> None:
        """Forget a dead actor (a generation's dispatch has put its unfinished chunks back) and replace it."""
        if slot in self._slots:
            self._slots.remove(slot)
        slot.lost = True
        self._starting.pop(slot.ready_ref, None)
        slot.in_flight.clear()
        try:
            ray.kill(slot.actor)
        except Exception:  # already gone
            pass
        self._replace()

    def _state_ref(self):
        """What a drifted or new actor loads: the driver's base weights and optimiser state (the driver
        is the reference: every copy of the model runs on one device type)."""
        state = self.worker.sync_state()
        self._count(wire_bytes(state))
        return ray.put(state)

    def _sync(self, slots: list[_Slot]) -> None:
        """Load the driver's state into ``slots`` and check they then agree; lost actors are replaced."""
        if not slots:
            return
        state_ref = self._state_ref()
        refs = [(slot, slot.actor.load_sync_state.remote(state_ref)) for slot in slots]
        expected = self.worker.checksum()
        for slot, ref in refs:
            try:
                checksum = ray.get(ref)
            except ACTOR_LOST:
                self._lose(slot)
                continue
            if checksum != expected:
                raise RuntimeError(
                    f"Ray actor on node {slot.node_id[:8]} still disagrees with the driver after a resync"
                )
        self.resyncs += len(slots)

    def _became_ready(self, slot: _Slot, info_ref) -> None:
        """A starting actor answered ``ready()``: check its weights, resync if needed, let it serve."""
        self._starting.pop(info_ref, None)
        try:
            info = ray.get(info_ref)
        except ACTOR_LOST as error:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS and not any(s.serving for s in self._slots if s is not slot):
                raise startup_error(error) from None
            self._lose(slot)
            return
        except ray.exceptions.RayTaskError as error:
            raise task_error(error) from None
        if "error" in info:
            kind, message = info["error"]
            where = f"a Ray actor on node {info['node_id'][:8]} could not build its worker"
            raise (UsageError if kind == "usage" else RuntimeError)(f"{where}: {message}")
        self._failed_starts = 0
        slot.node_id = info["node_id"]
        self._count(wire_bytes(info))
        if info["checksum"] != self.worker.checksum():  # a replacement starts at the initial weights
            self._sync([slot])
            if slot.lost:  # while loading
                return
        slot.ready_ref = None

    def _await_starting(self, block: bool) -> None:
        """Admit starting actors that are ready (all of them when ``block``)."""
        while self._starting:
            refs = list(self._starting)
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=None if block else 0)
            for ref in done:
                if ref in self._starting:  # not lost meanwhile
                    self._became_ready(self._starting[ref], ref)
            if not block:
                return

    def _count(self, nbytes: int) -> None:
        self._bytes += nbytes
        self._bytes_total += nbytes

    # ---- the evaluator interface ---------------------------------------------------------------

    def _follow_driver(self) -> None:
        """If the driver's weights changed other than by apply_update, every actor loads them."""
        current = self.worker.checksum()
        if current != self._driver_checksum:
            self._sync([slot for slot in self._slots if slot.serving])
            self._driver_checksum = current

    def evaluate(self, population: list, generation: int) -> list[tuple[float, ...]]:
        started = time.perf_counter()
        self._bytes = 0
        self._follow_driver()
        self._await_starting(block=False)
        serving = sum(1 for slot in self._slots if slot.serving) or 1
        chunks = self._chunks(len(population), serving)
        results: list = [None] * len(population)

        def submit(actor, bounds):
            start, stop = bounds  # genes made per chunk: short-lived, they never reach the old GC generation
            work = dumps((pack([genes_of(individual) for individual in population[start:stop]]), generation))
            self._count(len(work))
            return actor.evaluate_chunk.remote(work)

        def on_result(index, value):
            self._count(len(value))
            fitnesses, tokens = pickle.loads(value)
            start, stop = chunks[index]
            results[start:stop] = fitnesses
            self._tokens += tokens
            if self.on_chunk_done is not None:
                self.on_chunk_done(self, generation, index)

        self._dispatch(chunks, submit, on_result)
        self._individuals = len(population)
        self._seconds = time.perf_counter() - started
        return results

    def apply_update(self, update) -> None:
        """Apply ``update`` on the driver's worker and on every actor, then check they all agree."""
        if update is None:
            return
        self._follow_driver()  # first: the actors must start this update from the driver's weights
        update_ref = ray.put(update)
        serving = [slot for slot in self._slots if slot.serving]
        self._count(wire_bytes(update) * len(serving))
        answers = [(slot, slot.actor.apply_update.remote(update_ref)) for slot in serving]
        self.worker.apply_update(update)  # while the actors apply theirs
        self._driver_checksum = self.worker.checksum()
        checksums: dict = {}
        sizes: dict = {}  # bytes of each distinct checksum (they all agree, as a rule)
        waiting = time.perf_counter()
        values = values_of([ref for _, ref in answers])
        self.wait_seconds += time.perf_counter() - waiting
        for (slot, _), checksum in zip(answers, values):
            if isinstance(checksum, ACTOR_LOST):
                self._lose(slot)
                continue
            if isinstance(checksum, ray.exceptions.RayTaskError):
                raise task_error(checksum) from None
            checksums[slot] = checksum
            self._count(sizes.get(checksum) or sizes.setdefault(checksum, wire_bytes(checksum)))
        # An actor can drift from the driver even on a deterministic update's input: CUDA's embedding
        # backward (refinement) adds in a nondeterministic order. The driver's weights are the reference.
        drifted = [slot for slot, checksum in checksums.items() if checksum != self._driver_checksum and not slot.lost]
        if drifted:
            log.warning("evolm: resynchronising %d Ray actor(s) whose base weights drifted", len(drifted))
            self._sync(drifted)

    def wait_for_actors(self) -> None:
        """Block until every actor being started (a replacement, say) has joined and is in sync."""
        self._replace()
        self._await_starting(block=True)

    @property
    def forward_tokens(self) -> int:
        # The driver's own worker counts whatever it scores itself (none of the population here).
        return self.worker.forward_tokens + self._tokens

    @property
    def actors(self) -> list:
        """Handles of the actors now serving (tests kill one of these)."""
        return [slot.actor for slot in self._slots if slot.serving]

    def actor_nodes(self) -> list[str]:
        return [slot.node_id for slot in self._slots if slot.serving]

    def stats(self) -> dict:
        return {
            "actors_alive": sum(1 for slot in self._slots if slot.serving),
            "nodes": len(set(self.actor_nodes())),
            "individuals_per_second": round(self._individuals / self._seconds, 3) if self._seconds else 0.0,
            "bytes_sent": self._bytes,
            "bytes_sent_total": self._bytes_total,
            "bytes_per_individual": round(self._bytes / self._individuals, 1) if self._individuals else 0.0,
            "actors_replaced": self.actors_replaced,
            "chunks_rerun": self.chunks_rerun,
            "resyncs": self.resyncs,
        }

    def close(self) -> None:
        if getattr(self, "_frozen", False):
            gc.unfreeze()
            self._frozen = False
        for slot in getattr(self, "_slots", []):
            try:
                ray.kill(slot.actor)
            except Exception:
                pass
        self._slots = []
        if self._owns_runtime and ray.is_initialized():
            ray.shutdown()
            self._owns_runtime = False
