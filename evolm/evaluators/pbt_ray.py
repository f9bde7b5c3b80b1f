"""Population-based training on Ray actors: each member lives in an actor, trains there and is scored
there; the driver only decides exploit and explore (:mod:`evolm.strategies.pbt`, the same seeded
draws as in-process, so a Ray run reports the in-process metrics for the same config and seed).

Placement: min(``evaluator.workers`` (or the cluster's room), members) actors; member i trains on the
(i mod n)-th serving actor, so an actor hosts several members when there are fewer actors than
members and trains them one after another, as the driver does in-process. An actor keeps every member
it trained (weights, Adam state; the hyperparameters come with each call): a member that stays on
its actor and was not exploited trains on from there with nothing shipped.

State: each train call returns three objects: the fitness and tokens (the driver fetches them), the
trained weights and the Adam state. The last two stay in Ray's object store as ObjectRefs the driver
owns, wrapped in a :class:`MemberHandle`; the driver keeps each member's latest handle and never
fetches it for exploit: a loser's handle becomes the winner's, and at the next generation the
loser's actor receives the winner's refs as arguments and Ray moves the state from the winner's node
(objects under Ray's inline limit, 100 KiB by default, ride with the call). The driver fetches
weights only for the best member after each generation (its worker's base: validation, reports and
the saved model follow it, as in-process) and every member's state for a checkpoint.

Faults: the object store keeps a returned object when the actor that made it dies, so a killed
actor's members lose nothing: the driver starts a replacement, their unfinished training runs again
on the serving actors from the handles the generation started from (the same seeded batches and
dropout: the same result), and the replacement serves from the next generation. A lost node loses
the objects it stored; the run then stops, and ``evolm resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.exceptions
import torch

from evolm.assembly import worker_from_config
from evolm.errors import UsageError
from evolm.evaluators.ray import ACTOR_LOST, MAX_FAILED_STARTS
from evolm.evaluators.ray_actor import EvaluationActor, payload_bytes
from evolm.evaluators.ray_cluster import (
    actor_count,
    actor_device,
    actor_options,
    check_gpus_per_worker,
    connect,
    startup_error,
    task_error,
)
from evolm.genome import HyperGenome
from evolm.individuals import genes_of
from evolm.strategies.pbt import score_member, train_member

_ACTOR_CLASS: Any = None  # MemberActor as a Ray actor class, made once


def state_bytes(value) -> int:
    """Bytes of the tensors in a nested state (a member's weights, Adam's state dict)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(state_bytes(v) for v in value)
    return 0


class MemberActor(EvaluationActor):
    """A Ray actor that hosts pbt members: a worker built from the run config (its model is the
    training scratch space) and each member it trained, by index."""

    def __init__(self, config, threads: int, device: str, factory):
        super().__init__(config, threads, device, factory)
        self.config = config
        self.genome = HyperGenome()
        self.members: dict[int, dict] = {}

    @ray.method(num_returns=3)
    def train(self, index: int, genes, generation: int, tensors=None, optimizer=None):
        """One ready interval of member ``index`` under ``genes``, then its score. ``tensors`` and
        ``optimizer`` (Ray resolves refs given here from the object store) replace what the actor holds
        of the member; without them it trains on from its own copy. Returns ((fitness, forward tokens),
        trained weights, Adam state)."""
        if self.worker is None:
            raise RuntimeError(f"the Ray actor could not build its worker: {self.error[1] if self.error else ''}")
        member = self.members[index] if tensors is None else {"tensors": tensors, "optimizer": optimizer}
        member["genes"] = list(genes)
        context = self.worker.fitness_context(generation)  # before training, as in-process
        before = self.worker.forward_tokens
        train_member(self.worker, self.genome, member, index, generation, self.config.seed, self.config)
        fitness = score_member(self.worker, context)
        self.members[index] = member
        return (fitness, self.worker.forward_tokens - before), member["tensors"], member["optimizer"]

    def keep(self, indices: list[int]) -> None:
        """Forget members now trained elsewhere (after the serving actors changed)."""
        self.members = {index: self.members[index] for index in indices if index in self.members}


class MemberHandle:
    """A trained member's weights and Adam state in Ray's object store: refs owned by the driver, which
    outlive the actor that made them. Exploit passes the handle on; only :meth:`weights` and
    :meth:`state` (the best member's weights, a checkpoint) bring the values to the driver."""

    def __init__(self, weights_ref, optimizer_ref, evaluator: PBTRayEvaluator):
        self.weights_ref, self.optimizer_ref = weights_ref, optimizer_ref
        self._evaluator = evaluator

    def weights(self) -> list[torch.Tensor]:
        tensors = ray.get(self.weights_ref)
        self._evaluator.received(state_bytes(tensors))
        return tensors

    def state(self) -> dict:
        optimizer = ray.get(self.optimizer_ref)
        self._evaluator.received(state_bytes(optimizer))
        return {"tensors": self.weights(), "optimizer": optimizer}


@dataclass(eq=False)
class _Host:
    """One actor and what the driver knows of it."""

    actor: Any
    serial: int  # which start this is (an id() could be reused once a lost host is freed)
    ready_ref: Any = None  # pending ``ready()`` while the actor starts; None once it serves
    resident: dict = field(default_factory=dict)  # member index -> the handle of the state the actor holds


class PBTRayEvaluator:
    """Trains and scores pbt's members on Ray actors; the evaluator interface of
    :class:`~evolm.evaluators.ray.RayEvaluator`. ``evaluate`` takes the individuals of
    :meth:`evolm.strategies.pbt.PopulationBasedTraining.ask` (``member``, ``member_start``) and sets
    ``member_trained`` on each. ``on_member_done(evaluator, generation, member)``, when set, runs after
    each member's result is stored (a test hook: a test kills an actor in the middle of a generation)."""

    def __init__(self, config, worker):
        settings = config.evaluator
        self.config, self.worker = config, worker
        self.threads = max(1, settings.threads_per_worker)
        self.gpus = check_gpus_per_worker(float(settings.gpus_per_worker))
        self.device = actor_device(self.gpus)
        driver_type = torch.device(getattr(worker, "device", None) or "cpu").type
        if driver_type != self.device:  # members train on one device type: CPU and CUDA arithmetic differ
            raise UsageError(
                f"config field evaluator.gpus_per_worker: {settings.gpus_per_worker:g} puts Ray actors on "
                f"{self.device} but the driver's model is on {driver_type}; use one device type per run"
            )
        self._factory = getattr(worker, "factory", None) or worker_from_config  # it must pickle
        self.on_member_done = None
        self._hosts: list[_Host] = []
        self._layout: tuple = ()
        self._serials = itertools.count()
        self._failed_starts = 0
        self._tokens = self._bytes_sent = self._bytes_received = self._bytes_received_total = 0
        self._individuals, self._seconds = 0, 0.0
        self.actors_replaced = self.members_rerun = self.states_loaded = 0
        self._owns_runtime = connect(settings, settings.workers * self.threads)
        try:
            members = config.strategy.population_size
            self.target = min(actor_count(settings.workers, self.threads, self.gpus), members)
            for _ in range(self.target):
                self._start_actor()
            self._admit(block=True)
            if not self._serving():
                raise RuntimeError("no Ray actor could be started")
        except BaseException:
            self.close()
            raise

    # ---- actors --------------------------------------------------------------------------------

    def _start_actor(self) -> None:
        global _ACTOR_CLASS
        if _ACTOR_CLASS is None:
            _ACTOR_CLASS = ray.remote(MemberActor)
        actor = _ACTOR_CLASS.options(**actor_options(self.threads, self.gpus)).remote(
            self.config, self.threads, self.device, self._factory
        )
        self._hosts.append(_Host(actor=actor, serial=next(self._serials), ready_ref=actor.ready.remote()))

    def _serving(self) -> list[_Host]:
        return [host for host in self._hosts if host.ready_ref is None]

    def _lose(self, host: _Host) -> None:
        """Forget a dead actor and start its replacement (it serves once ready)."""
        if host in self._hosts:
            self._hosts.remove(host)
        try:
            ray.kill(host.actor)
        except Exception:  # already gone
            pass
        if self._failed_starts < MAX_FAILED_STARTS:
            self._start_actor()
            self.actors_replaced += 1

    def _admit(self, block: bool) -> None:
        """Let starting actors that answered ``ready()`` serve (every one of them when ``block``)."""
        starting = {host.ready_ref: host for host in self._hosts if host.ready_ref is not None}
        if not starting:
            return
        done, _ = ray.wait(list(starting), num_returns=len(starting), timeout=None if block else 0)
        for ref in done:
            host = starting[ref]
            try:
                info = ray.get(ref)
            except ACTOR_LOST as error:
                self._failed_starts += 1
                if self._failed_starts >= MAX_FAILED_STARTS:
                    raise startup_error(error) from None
                self._lose(host)
                continue
            if "error" in info:
                kind, message = info["error"]
                where = f"a Ray actor on node {info['node_id'][:8]} could not build its worker"
                raise (UsageError if kind == "usage" else RuntimeError)(f"{where}: {message}")
            self._failed_starts = 0
            host.ready_ref = None

    def _hosts_for_generation(self) -> list[_Host]:
        """The serving actors, after admitting any that became ready (waiting while none serves); when
        they changed, each drops the members it no longer hosts."""
        self._admit(block=not self._serving())
        serving = self._serving()
        layout = tuple(host.serial for host in serving)
        if layout != self._layout:  # members moved: each actor drops the ones it no longer hosts
            self._layout = layout
            for position, host in enumerate(serving):
                kept = [i for i in host.resident if i % len(serving) == position]
                host.resident = {i: host.resident[i] for i in kept}
                host.actor.keep.remote(kept)
        return serving

    # ---- the evaluator interface ---------------------------------------------------------------

    def received(self, nbytes: int) -> None:
        """Count bytes the driver fetched from the object store."""
        self._bytes_received += nbytes
        self._bytes_received_total += nbytes

    def evaluate(self, population: list, generation: int) -> list[tuple[float, ...]]:
        started = time.perf_counter()
        self._bytes_sent = self._bytes_received = self.states_loaded = 0
        results: list = [None] * len(population)
        shipped: dict[int, tuple] = {}  # id of a start state held on the driver -> its refs, put once
        in_flight: dict = {}  # result ref -> (host, position, weights ref, optimizer ref)

        serving = self._hosts_for_generation()  # placement changes only here, with nothing in flight

        def submit(position: int) -> None:
            nonlocal serving
            if not serving:  # every serving actor died this generation: wait for a replacement
                self._admit(block=True)
                serving = self._serving()
                if not serving:
                    raise RuntimeError("every Ray actor has died and none could be replaced")
            individual = population[position]
            index, start = individual.member, individual.member_start
            host = serving[index % len(serving)]
            if host.resident.get(index) is start:
                state: tuple = ()  # the actor holds exactly this state: nothing to ship
            elif isinstance(start, dict):  # the first generation's weights, or a restored checkpoint's member
                if id(start) not in shipped:
                    optimizer = None if start["optimizer"] is None else ray.put(start["optimizer"])
                    shipped[id(start)] = (ray.put(start["tensors"]), optimizer)
                    self._bytes_sent += state_bytes(start)
                state = shipped[id(start)]
            else:  # a handle: the actor fetches the refs from the object store (an exploit, or a moved member)
                state = (start.weights_ref, start.optimizer_ref)
            self.states_loaded += bool(state)
            host.resident.pop(index, None)
            arguments = (index, genes_of(individual), generation)
            self._bytes_sent += payload_bytes(arguments)
            result_ref, weights_ref, optimizer_ref = host.actor.train.remote(*arguments, *state)
            in_flight[result_ref] = (host, position, weights_ref, optimizer_ref)

        for position in range(len(population)):
            submit(position)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            host, position, weights_ref, optimizer_ref = in_flight.pop(done[0])
            try:
                fitness, tokens = ray.get(done[0])
            except ACTOR_LOST:
                lost = [position] + [p for ref, (h, p, _, _) in list(in_flight.items()) if h is host]
                for ref in [ref for ref, entry in in_flight.items() if entry[0] is host]:
                    del in_flight[ref]
                self._lose(host)  # its replacement serves from the next generation
                serving = [h for h in serving if h is not host]
                for lost_position in lost:  # again, from the state the generation started from
                    submit(lost_position)
                    self.members_rerun += 1
                continue
            except ray.exceptions.RayTaskError as error:
                raise task_error(error) from None
            self.received(payload_bytes((fitness, tokens)))
            individual = population[position]
            individual.member_trained = MemberHandle(weights_ref, optimizer_ref, self)
            host.resident[individual.member] = individual.member_trained
            results[position] = fitness
            self._tokens += tokens
            if self.on_member_done is not None:
                self.on_member_done(self, generation, individual.member)
        self._individuals = len(population)
        self._seconds = time.perf_counter() - started
        return results

    def apply_update(self, update) -> None:
        """pbt sends no update: exploit travels as handles (see the module docstring)."""
        if update is not None:
            raise RuntimeError("pbt on Ray takes no weight update")

    def wait_for_actors(self) -> None:
        """Block until every actor being started (a replacement, say) serves."""
        self._admit(block=True)

    @property
    def forward_tokens(self) -> int:
        return self.worker.forward_tokens + self._tokens

    @property
    def actors(self) -> list:
        """Handles of the actors now serving, in placement order (tests kill one of these)."""
        return [host.actor for host in self._serving()]

    def stats(self) -> dict:
        return {
            "actors_alive": len(self._serving()),
            "individuals_per_second": round(self._individuals / self._seconds, 3) if self._seconds else 0.0,
            "bytes_sent": self._bytes_sent,
            "bytes_received": self._bytes_received,
            "bytes_received_total": self._bytes_received_total,
            "states_loaded": self.states_loaded,
            "actors_replaced": self.actors_replaced,
            "members_rerun": self.members_rerun,
        }

    def close(self) -> None:
        for host in getattr(self, "_hosts", []):
            try:
                ray.kill(host.actor)
            except Exception:
                pass
        self._hosts = []
        if getattr(self, "_owns_runtime", False) and ray.is_initialized():
            ray.shutdown()
            self._owns_runtime = False
