"""Fitness evaluation on Ray actors: each actor builds its own worker from the run config once,
then receives only genes and a generation number (seeds, not weights).

The only module in evolm that imports ray. Individuals are split into chunks that keep every actor
busy; results are written back by index, so a Ray run reports exactly what the in-process evaluator
reports for the same seed. Strategy updates travel as the update object itself (seeds and
coefficients); every actor applies it and answers with a checksum of its base weights, which the
driver compares with its own worker's, resynchronising a drifted actor. An actor lost mid-generation
has its unfinished chunks run again on the others, and a replacement, synchronised from the driver's
worker, joins when the cluster has room for it. Weights changed on the driver other than by an
update (a restored checkpoint) are noticed by checksum and loaded into every actor.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import ray
import ray.exceptions
import torch
from ray import cloudpickle

from evolm.errors import UsageError
from evolm.evaluators import aligned_slices

# Tasks in flight per actor: a second queued chunk hides the driver round trip between chunks.
PIPELINE_DEPTH = 2
# Chunks per actor in a generation: small enough to balance uneven actors and to lose little work
# when an actor dies, large enough that Ray's per-task overhead (~1 ms) stays negligible.
CHUNKS_PER_ACTOR = 4
# Consecutive failed replacement starts after which evolm stops replacing (a config that cannot build).
MAX_FAILED_STARTS = 3
CONNECT_SECONDS = 5.0  # TCP connect to a cluster address
HANDSHAKE_SECONDS = 5.0  # the address must answer as a gRPC (HTTP/2) server, as Ray's GCS does

# An actor that has died, or whose process is gone, raises one of these on every call.
ACTOR_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, ray.exceptions.WorkerCrashedError)

log = logging.getLogger(__name__)
_ACTOR_CLASS = None  # EvaluationActor as a Ray actor class, made once


def payload_bytes(value) -> int:
    """Bytes ``value`` takes once serialised: what crosses the process boundary for it."""
    return len(cloudpickle.dumps(value))


class EvaluationActor:
    """A Ray actor holding one worker, built from the run config (never from shipped weights) by the
    driver worker's factory (``Worker.from_config`` unless the run was given another)."""

    def __init__(self, config, threads: int, device: str, factory=None):
        from evolm.worker import Worker

        torch.set_num_threads(threads)
        config = copy.deepcopy(config)
        config.threads = threads
        config.device = device
        self.worker = None
        self.error = None
        try:
            self.worker = (factory or Worker.from_config)(config)
        except UsageError as error:  # e.g. the data path is missing on this node: the driver says so
            self.error = ("usage", str(error))
        except Exception as error:
            self.error = ("other", f"{type(error).__name__}: {error}")

    def ready(self) -> dict:
        node_id = ray.get_runtime_context().get_node_id()
        if self.error is not None:
            return {"node_id": node_id, "error": self.error}
        return {"node_id": node_id, "pid": os.getpid(), "checksum": self.worker.checksum()}

    def evaluate(self, genes_list, generation: int):
        """Fitness tuples of the chunk and the forward tokens they took."""
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

    def call(self, function, items) -> list:
        return [function(item) for item in items]


@dataclass(eq=False)
class _Slot:
    """One actor and what the driver knows of it."""

    actor: object
    ready_ref: object = None  # pending ``ready()`` while the actor starts; None once it serves
    node_id: str = ""
    in_flight: set = field(default_factory=set)

    @property
    def serving(self) -> bool:
        return self.ready_ref is None


class RayEvaluator:
    """Evaluates on Ray actors; same interface as :class:`~evolm.evaluators.local.LocalEvaluator`.

    ``on_chunk_done(evaluator, generation, chunk_index)``, when set, is called after each chunk's
    result is stored (a test hook: it lets a test kill an actor in the middle of a generation).
    """

    def __init__(self, config, worker):
        self.config = config
        self.worker = worker
        settings = config.evaluator
        self.threads = max(1, settings.threads_per_worker)
        self.gpus = float(settings.gpus_per_worker)
        if self.gpus < 0:
            raise UsageError(f"config field evaluator.gpus_per_worker must be 0 or positive, got {settings.gpus_per_worker}")
        if str(config.device).startswith("cuda") and self.gpus == 0:
            raise UsageError("config field evaluator.gpus_per_worker must be positive when device is cuda (Ray actors get no GPU otherwise)")
        self.device = "cuda" if self.gpus > 0 else "cpu"
        driver_device = getattr(worker, "device", None) or next(worker.model.parameters()).device
        # Actors on another device than the driver round differently: they are checked against each other.
        self._driver_is_reference = torch.device(driver_device).type == self.device
        self._factory = getattr(worker, "factory", None)  # engine.make_worker records it; it must pickle
        self._owns_runtime = False
        self._connect(settings)
        self.target = self._actor_count(settings.workers)
        # Chunks start at multiples of the worker's batched-pass size, so each actor forms the same
        # sub-batches as the in-process evaluator would: the same shapes, the same arithmetic.
        self._batch_multiple = max(1, getattr(worker, "population_chunk", 0) or 1)
        self._slots: list[_Slot] = []
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

    # ---- runtime -------------------------------------------------------------------------------

    def _connect(self, settings) -> None:
        if ray.is_initialized():  # a caller (a test, a notebook) already holds a runtime: share it
            return
        # Token authentication stays on: Ray 2.60 turns it on for a new local runtime, not when joining
        # by address, so evolm asks for it explicitly unless the user set RAY_AUTH_MODE themselves.
        if "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"  # inherited by the processes Ray starts
            _refresh_ray_config()
        common = dict(include_dashboard=False, logging_level=logging.WARNING)
        if not settings.ray_address:
            if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not _token_available():
                # A runtime of our own with authentication on and no token anywhere: give it a fresh one
                # (kept in this process's environment, inherited by the processes Ray starts).
                os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
                _refresh_ray_config()
            ray.init(address="local", num_cpus=settings.workers * self.threads, **common)
            self._owns_runtime = True
            return
        address = _check_address(settings.ray_address)
        _check_token(settings.ray_address, address)
        try:
            ray.init(address=address, **common)
        except ray.exceptions.AuthenticationError as error:
            raise UsageError(f"config field evaluator.ray_address {settings.ray_address}: {_auth_hint(error)}") from None
        except (ConnectionError, RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if "auth" in str(error).lower() or "token" in str(error).lower():
                first = _auth_hint(error)
            raise UsageError(f"config field evaluator.ray_address {settings.ray_address}: cannot join the Ray cluster: {first}") from None
        self._owns_runtime = True

    def _actor_count(self, workers: int) -> int:
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if workers <= 0:  # joining a cluster without --workers: as many actors as it has room for
            workers = int(cpus // self.threads)
            if self.gpus:
                workers = min(workers, int(gpus // self.gpus + 1e-9))
        if workers <= 0:
            raise UsageError(f"the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs: not enough for one actor "
                             f"({self.threads} CPUs, {self.gpus:g} GPUs)")
        if workers * self.threads > cpus + 1e-9:
            raise UsageError(f"config field evaluator.workers: {workers} actors of {self.threads} CPUs need "
                             f"{workers * self.threads} CPUs; the Ray cluster has {cpus:g}")
        if self.gpus and workers * self.gpus > gpus + 1e-9:
            raise UsageError(f"config field evaluator.gpus_per_worker: {workers} actors of {self.gpus:g} GPUs need "
                             f"{workers * self.gpus:g} GPUs; the Ray cluster has {gpus:g}")
        return workers

    # ---- actors --------------------------------------------------------------------------------

    def _start_actor(self) -> None:
        # max_restarts=0: a process Ray restarted would rebuild its worker from the config, i.e. at
        # the initial weights, and silently score genes against a stale center. A replacement made
        # here is checked (checksum) and synchronised before it receives any work.
        global _ACTOR_CLASS
        if _ACTOR_CLASS is None:
            _ACTOR_CLASS = ray.remote(EvaluationActor)
        actor = (
            _ACTOR_CLASS
            .options(num_cpus=self.threads, num_gpus=self.gpus, max_restarts=0, scheduling_strategy="SPREAD")
            .remote(self.config, self.threads, self.device, self._factory)
        )
        self._slots.append(_Slot(actor=actor, ready_ref=actor.ready.remote()))

    def _replace(self) -> None:
        """Start actors until the target is met again; Ray places each when resources allow."""
        while len(self._slots) < self.target and self._failed_starts < MAX_FAILED_STARTS:
            self._start_actor()
            self.actors_replaced += 1

    def _lose(self, slot: _Slot, pending: deque | None = None, owner: dict | None = None) -> None:
        """Forget a dead actor; its unfinished chunks go back to the front of the queue."""
        if slot in self._slots:
            self._slots.remove(slot)
        for ref in list(slot.in_flight):
            if owner is not None and ref in owner:
                _, index = owner.pop(ref)
                if pending is not None:
                    pending.appendleft(index)
                    self.chunks_rerun += 1
        slot.in_flight.clear()
        try:
            ray.kill(slot.actor)
        except Exception:  # already gone
            pass
        self._replace()

    def _reference_checksum(self) -> str | None:
        if self._driver_is_reference:
            return self.worker.checksum()
        return None

    def _state_for_sync(self, exclude: list[_Slot], from_driver: bool = False):
        """What a drifted or new actor loads: the driver's base weights and optimiser state, or, when
        actors run on another device than the driver, the state of a serving actor."""
        if self._driver_is_reference or from_driver:
            state = self.worker.sync_state()
            self._count(payload_bytes(state))
            return ray.put(state)
        reference = next((s for s in self._slots if s.serving and s not in exclude), None)
        if reference is None:
            state = self.worker.sync_state()
            self._count(payload_bytes(state))
            return ray.put(state)
        state = ray.get(reference.actor.sync_state.remote())
        self._count(2 * payload_bytes(state))
        return ray.put(state)

    def _sync(self, slots: list[_Slot], from_driver: bool = False) -> None:
        """Load the reference state into ``slots`` and check they then agree; lost actors are replaced."""
        if not slots:
            return
        state_ref = self._state_for_sync(exclude=slots, from_driver=from_driver)
        refs = [(slot, slot.actor.load_sync_state.remote(state_ref)) for slot in slots]
        expected = self._reference_checksum()
        for slot, ref in refs:
            try:
                checksum = ray.get(ref)
            except ACTOR_LOST:
                self._lose(slot)
                continue
            if expected is not None and checksum != expected:
                raise RuntimeError(f"Ray actor on node {slot.node_id[:8]} still disagrees with the driver after a resync")
        self.resyncs += len(slots)

    def _became_ready(self, slot: _Slot, info_ref) -> None:
        """A starting actor answered ``ready()``: check its weights, resync if needed, let it serve."""
        try:
            info = ray.get(info_ref)
        except ACTOR_LOST as error:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS and not any(s.serving for s in self._slots if s is not slot):
                raise _startup_error(error) from None
            self._lose(slot)
            return
        except ray.exceptions.RayTaskError as error:
            raise _task_error(error) from None
        if "error" in info:
            kind, message = info["error"]
            where = f"a Ray actor on node {info['node_id'][:8]} could not build its worker"
            raise (UsageError if kind == "usage" else RuntimeError)(f"{where}: {message}")
        self._failed_starts = 0
        slot.node_id = info["node_id"]
        self._count(payload_bytes(info))
        expected = self._reference_checksum()
        if expected is None:
            peers = Counter(self._checksums_of([s for s in self._slots if s.serving]))
            expected = peers.most_common(1)[0][0] if peers else info["checksum"]
        if info["checksum"] != expected:  # a replacement starts at the initial weights
            self._sync([slot])
            if slot not in self._slots:  # lost while loading
                return
        slot.ready_ref = None

    def _checksums_of(self, slots: list[_Slot]) -> list[str]:
        refs = [s.actor.ready.remote() for s in slots]
        return [info["checksum"] for info in ray.get(refs)]

    def _await_starting(self, block: bool) -> None:
        """Admit starting actors that are ready (all of them when ``block``)."""
        while True:
            starting = {slot.ready_ref: slot for slot in self._slots if not slot.serving}
            if not starting:
                return
            done, _ = ray.wait(list(starting), num_returns=len(starting) if block else 1, timeout=None if block else 0)
            if not done:
                return
            for ref in done:
                self._became_ready(starting[ref], ref)
            if not block:
                return

    # ---- scheduling ----------------------------------------------------------------------------

    def _count(self, nbytes: int) -> None:
        self._bytes += nbytes
        self._bytes_total += nbytes

    def _chunks(self, count: int, actors: int) -> list[tuple[int, int]]:
        return aligned_slices(count, actors * CHUNKS_PER_ACTOR, self._batch_multiple)

    def _dispatch(self, payloads: list, submit, on_result) -> None:
        """Run every payload on some actor, each actor holding at most PIPELINE_DEPTH in flight.

        ``submit(actor, payload) -> ObjectRef``; ``on_result(index, value)`` stores a result. A chunk
        whose actor dies goes back to the queue and runs again elsewhere: only completed chunks count.
        """
        pending = deque(range(len(payloads)))
        owner: dict = {}  # in-flight ref -> (slot, payload index)
        while pending or owner:
            for slot in list(self._slots):
                while slot.serving and pending and len(slot.in_flight) < PIPELINE_DEPTH:
                    index = pending.popleft()
                    ref = submit(slot.actor, payloads[index])
                    owner[ref] = (slot, index)
                    slot.in_flight.add(ref)
            starting = {slot.ready_ref: slot for slot in self._slots if not slot.serving}
            if not owner and not starting:
                self._replace()
                starting = {slot.ready_ref: slot for slot in self._slots if not slot.serving}
                if not starting:
                    raise RuntimeError("every Ray actor has died and none could be replaced")
            done, _ = ray.wait(list(owner) + list(starting), num_returns=1)
            ref = done[0]
            if ref in starting:
                self._became_ready(starting[ref], ref)
                continue
            slot, index = owner.pop(ref)
            slot.in_flight.discard(ref)
            try:
                value = ray.get(ref)
            except ACTOR_LOST:
                pending.appendleft(index)
                self.chunks_rerun += 1
                self._lose(slot, pending, owner)
                continue
            except ray.exceptions.RayTaskError as error:
                raise _task_error(error) from None
            on_result(index, value)

    # ---- the evaluator interface ---------------------------------------------------------------

    def _follow_driver(self) -> None:
        """If the driver's weights changed other than by apply_update, every actor loads them."""
        current = self.worker.checksum()
        if current != self._driver_checksum:
            self._sync([slot for slot in self._slots if slot.serving], from_driver=True)
            self._driver_checksum = current

    def evaluate(self, population: list, generation: int) -> list[tuple[float, ...]]:
        started = time.perf_counter()
        self._bytes = 0
        self._follow_driver()
        self._await_starting(block=False)
        genes = [list(individual) for individual in population]
        serving = sum(1 for slot in self._slots if slot.serving) or 1
        chunks = self._chunks(len(genes), serving)
        results: list = [None] * len(genes)

        def submit(actor, bounds):
            start, stop = bounds
            arguments = (genes[start:stop], generation)
            self._count(payload_bytes(arguments))
            return actor.evaluate.remote(*arguments)

        def on_result(index, value):
            fitnesses, tokens = value
            self._count(payload_bytes(value))
            start, stop = chunks[index]
            results[start:stop] = fitnesses
            self._tokens += tokens
            if self.on_chunk_done is not None:
                self.on_chunk_done(self, generation, index)

        self._dispatch(chunks, submit, on_result)
        self._individuals = len(genes)
        self._seconds = time.perf_counter() - started
        return results

    def map(self, function, iterable) -> list:
        """DEAP's seam (``toolbox.register("map", evaluator.map)``): ``function`` runs on the actors."""
        items = list(iterable)
        if not items:
            return []
        self._follow_driver()
        self._await_starting(block=False)
        function_ref = ray.put(function)
        function_size = payload_bytes(function)
        serving = sum(1 for slot in self._slots if slot.serving) or 1
        chunks = self._chunks(len(items), serving)
        results: list = [None] * len(items)

        def submit(actor, bounds):
            start, stop = bounds
            self._count(function_size + payload_bytes(items[start:stop]))
            return actor.call.remote(function_ref, items[start:stop])

        def on_result(index, value):
            self._count(payload_bytes(value))
            start, stop = chunks[index]
            results[start:stop] = value

        self._dispatch(chunks, submit, on_result)
        return results

    def apply_update(self, update) -> None:
        """Apply ``update`` on the driver's worker and on every actor, then check they all agree."""
        if update is None:
            return
        self._follow_driver()  # first: the actors must start this update from the driver's weights
        update_ref = ray.put(update)
        serving = [slot for slot in self._slots if slot.serving]
        self._count(payload_bytes(update) * len(serving))
        answers = [(slot, slot.actor.apply_update.remote(update_ref)) for slot in serving]
        self.worker.apply_update(update)  # while the actors apply theirs
        self._driver_checksum = self.worker.checksum()
        checksums = {}
        for slot, ref in answers:
            try:
                checksums[slot] = ray.get(ref)
            except ACTOR_LOST:
                self._lose(slot)
            except ray.exceptions.RayTaskError as error:
                raise _task_error(error) from None
            else:
                self._count(payload_bytes(checksums[slot]))
        expected = self._reference_checksum()
        if expected is None and checksums:
            # Actors agree among themselves; a tie goes to the longest-serving actor (listed first).
            expected = Counter(checksums.values()).most_common(1)[0][0]
        drifted = [slot for slot, checksum in checksums.items() if checksum != expected and slot in self._slots]
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
        for slot in getattr(self, "_slots", []):
            try:
                ray.kill(slot.actor)
            except Exception:
                pass
        self._slots = []
        if self._owns_runtime and ray.is_initialized():
            ray.shutdown()
            self._owns_runtime = False


# ---- helpers -----------------------------------------------------------------------------------


def _refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config when imported; re-read it, as Ray's own ``ray.init`` does."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # another Ray version: it reads the variable at ray.init
        pass


def _check_address(address: str) -> str:
    """The cluster's ``HOST:PORT`` if something there answers like a Ray head, else a UsageError.

    Ray itself retries an unreachable head for many minutes; evolm checks first, so a wrong address
    is a one-line error within seconds (well under 30 s).
    """
    from ray._private import services

    try:
        resolved = services.canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as error:
        raise UsageError(f"config field evaluator.ray_address {address}: {str(error).splitlines()[0]}") from None
    if resolved is None:  # "local": not an existing cluster
        raise UsageError(f"config field evaluator.ray_address {address}: give auto or HOST:PORT of a running Ray cluster")
    host, _, port_text = resolved.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"config field evaluator.ray_address {address}: expected HOST:PORT") from None
    try:
        connection = socket.create_connection((host, port), timeout=CONNECT_SECONDS)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"config field evaluator.ray_address {address}: no Ray cluster answers at {host}:{port} ({reason})") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true") and not _speaks_http2(connection):
            raise UsageError(f"config field evaluator.ray_address {address}: {host}:{port} answers but is not a Ray cluster head (no gRPC)")
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


def _token_available() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return bool(os.environ.get("RAY_AUTH_TOKEN") or (path and os.path.exists(path))
                or os.path.exists(os.path.expanduser("~/.ray/auth_token")))


def _check_token(user_address: str, address: str) -> None:
    """With token authentication on, a missing or wrong token is a one-line error within a second
    (``ray.init`` would retry for about 20 s, logging every attempt)."""
    where = f"config field evaluator.ray_address {user_address}"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if not os.environ.get("RAY_AUTH_TOKEN") and path:
            if not os.path.isfile(path) or not open(path).read().strip():
                # Ray aborts the whole process on an unreadable token file: say so first.
                raise UsageError(f"{where}: RAY_AUTH_TOKEN_PATH {path} does not exist or is empty")
        default = os.path.expanduser("~/.ray/auth_token")
        has_default = os.path.isfile(default) and bool(open(default).read().strip())
        if not os.environ.get("RAY_AUTH_TOKEN") and not path and not has_default:
            raise UsageError(f"{where}: Ray token authentication is on but no token was found; give the cluster's token "
                             f"with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (on the head: ray get-auth-token)")
    try:
        from ray._raylet import GcsClient  # what `ray health-check` uses: one attempt, no retries
    except ImportError:  # another Ray version: ray.init reports it
        return
    with _native_stderr_swallowed():
        try:
            GcsClient(address=address)
        except ray.exceptions.AuthenticationError as error:
            raise UsageError(f"{where}: {_auth_hint(error)}") from None
        except Exception:  # anything else: ray.init tries again and reports it
            pass


@contextlib.contextmanager
def _native_stderr_swallowed():
    """Ray's C++ client logs a failed attempt straight to file descriptor 2; keep it out of the one-line error."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _speaks_http2(connection: socket.socket) -> bool:
    """Ray's head (GCS) is a gRPC server: it answers an HTTP/2 preface with a SETTINGS frame."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS
    deadline = time.monotonic() + HANDSHAKE_SECONDS
    try:
        connection.sendall(preface)
        received = b""
        while len(received) < 9 and time.monotonic() < deadline:
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = connection.recv(9 - len(received))
            if not chunk:
                return False
            received += chunk
    except OSError:
        return False
    return len(received) >= 9 and received[3] == 4  # frame type 4: SETTINGS


def _auth_hint(error) -> str:
    return ("Ray token authentication failed (" + str(error).strip().splitlines()[0][:120] + "); "
            "give the cluster's token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
            "(on the head: ray get-auth-token), with RAY_AUTH_MODE=token")


def _task_error(error: ray.exceptions.RayTaskError) -> BaseException:
    """The exception an actor raised, re-raised on the driver (a UsageError stays one)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, UsageError):
        return UsageError(f"on a Ray actor: {cause}")
    try:
        return error.as_instanceof_cause()
    except Exception:
        return error


def _startup_error(error) -> BaseException:
    missing = re.search(r"No module named '([^']+)'", str(error))
    if missing:  # the worker factory refers to code the actors cannot import (e.g. a user's model or fitness)
        return UsageError(f"Ray actors cannot import module {missing.group(1)!r}, which the model, adapter or fitness "
                          f"comes from: make it importable on every node (install it, or run from its folder), or define "
                          f"them in the script you run (__main__), whose definitions travel by value")
    text = str(error).strip().splitlines()
    return RuntimeError(f"Ray actors could not start: {text[0] if text else type(error).__name__}")
