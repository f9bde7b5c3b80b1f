"""The driver's side of a generation on Ray actors: chunks out, results back, lost chunks run again.

:class:`ChunkDispatch` is the part of :class:`evolm.evaluators.ray.RayEvaluator` that runs a
generation's chunks; it keeps the driver's work O(1) per chunk and per actor, so that the driver stays
a small share of a generation at a thousand actors (docs/scale.md): a queue of free places (an actor
once per free place in its pipeline) rather than a scan of every actor, one ``ray.wait`` that drains
every finished chunk, one ``ray.get`` for all of them, and no more chunks than actors once there are
many actors (each chunk costs the driver a remote call and a result, about 0.1 ms of its CPU).
"""

from __future__ import annotations

import pickle
import time
from collections import deque

import ray
import ray.exceptions
from ray import cloudpickle

from evolm.evaluators.ray_cluster import task_error
from evolm.evaluators.split import aligned_slices

# Tasks in flight per actor: a second queued chunk hides the driver round trip between chunks.
PIPELINE_DEPTH = 2
# Chunks per actor in a generation: small enough to balance uneven actors and to lose little work
# when an actor dies, large enough that Ray's per-task overhead (~1 ms) stays negligible.
CHUNKS_PER_ACTOR = 4
# Chunks in a generation, at most, unless there are more actors (then each gets one).
MAX_CHUNKS = 512
# Seconds between looks at the chunks still running once every chunk is out: a lost actor's chunks
# start again elsewhere within this, and each look drains all that finished.
TAIL_POLL_SECONDS = 0.2

# An actor that has died, or whose process is gone, raises one of these on every call.
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.WorkerCrashedError)
_FAILED = (*ACTOR_LOST, ray.exceptions.RayTaskError)


def dumps(value) -> bytes:
    """``value`` pickled by the standard pickler where it can (for plain data, the bytes cloudpickle would
    make, without its set-up on every call), else by Ray's cloudpickle; ``pickle.loads`` reads either."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:  # what only cloudpickle pickles (a class defined in __main__, a lambda)
        return cloudpickle.dumps(value)


def wire_bytes(value) -> int:
    """:func:`~evolm.evaluators.ray_actor.payload_bytes` by :func:`dumps`: the bytes ``value`` takes."""
    return len(dumps(value))


def values_of(refs: list) -> list:
    """Each ref's value, or the Ray error that getting it raised: one ``ray.get`` for all, unless one failed."""
    try:
        return ray.get(refs)
    except _FAILED:
        values = []
        for ref in refs:
            try:
                values.append(ray.get(ref))
            except _FAILED as error:
                values.append(error)
        return values


def chunk_count(actors: int) -> int:
    """How many chunks a generation is split into for ``actors`` serving actors."""
    return max(actors, min(actors * CHUNKS_PER_ACTOR, MAX_CHUNKS))


class ChunkDispatch:
    """Runs payloads on the actors of a :class:`~evolm.evaluators.ray.RayEvaluator` (which subclasses
    this and provides the slots, the starting actors and what to do when one starts or is lost)."""

    _slots: list
    _starting: dict  # ready() ref -> slot, for the actors still starting
    _batch_multiple: int
    chunks_rerun: int
    wait_seconds: float

    def _became_ready(self, slot, info_ref) -> None:
        raise NotImplementedError

    def _lose(self, slot) -> None:
        raise NotImplementedError

    def _replace(self) -> None:
        raise NotImplementedError

    def _chunks(self, count: int, actors: int) -> list[tuple[int, int]]:
        return aligned_slices(count, chunk_count(actors), self._batch_multiple)

    def _dispatch(self, payloads: list, submit, on_result) -> None:
        """Run every payload on some actor, each actor holding at most PIPELINE_DEPTH in flight.

        ``submit(actor, payload) -> ObjectRef``; ``on_result(index, value)`` stores a result. A chunk
        whose actor dies goes back to the queue and runs again elsewhere: only completed chunks count.
        """
        pending = deque(range(len(payloads)))
        owner: dict = {}  # in-flight ref -> (slot, payload index)
        room = deque(s for s in self._slots if s.serving for _ in range(PIPELINE_DEPTH - len(s.in_flight)))
        while pending or owner:
            while pending and room:
                slot = room.popleft()
                if slot.lost:
                    continue
                index = pending.popleft()
                ref = submit(slot.actor, payloads[index])
                owner[ref] = (slot, index)
                slot.in_flight.add(ref)
            if not owner and not self._starting:
                self._replace()
                if not self._starting:
                    raise RuntimeError("every Ray actor has died and none could be replaced")
            waiting = time.perf_counter()
            if pending:  # chunks wait for room: the first answer, or an actor that starts, makes some
                done, _ = ray.wait(list(owner) + list(self._starting), num_returns=1)
            else:  # every chunk is out: nothing to hand out in a hurry
                done, _ = ray.wait(list(owner), num_returns=len(owner), timeout=TAIL_POLL_SECONDS)
            self.wait_seconds += time.perf_counter() - waiting
            for ref in done:
                slot = self._starting.get(ref)
                if slot is not None:
                    self._became_ready(slot, ref)
                    if slot.serving and not slot.lost:
                        room.extend([slot] * PIPELINE_DEPTH)
            self._collect([ref for ref in done if ref in owner], pending, owner, room, on_result)

    def _collect(self, finished: list, pending: deque, owner: dict, room: deque, on_result) -> None:
        """Store finished chunks' results and free their places; a lost actor's chunks go back to the queue."""
        for ref, value in zip(finished, values_of(finished)):
            if ref not in owner:  # its actor was lost with an earlier one of these
                continue
            slot, index = owner.pop(ref)
            if isinstance(value, ACTOR_LOST):
                pending.appendleft(index)
                self.chunks_rerun += 1
                for other in slot.in_flight - {ref}:
                    if other in owner:
                        pending.appendleft(owner.pop(other)[1])
                        self.chunks_rerun += 1
                slot.in_flight.clear()
                self._lose(slot)
                continue
            if isinstance(value, ray.exceptions.RayTaskError):
                raise task_error(value) from None
            slot.in_flight.discard(ref)
            if not slot.lost:
                room.append(slot)
            on_result(index, value)
