"""Many Ray actors played by a few: measuring the driver at a scale this machine cannot run.

:class:`SimulatedActors` stands in for ``ray.remote(EvaluationActor)`` in
:class:`evolm.evaluators.ray.RayEvaluator` (its ``actor_class`` argument). Each actor the evaluator
starts is a *logical* actor, played by one of a few real Ray actors (:class:`HostActor`, asynchronous,
many calls at once). A logical actor answers exactly the calls an ``EvaluationActor`` answers, but
instead of running a large model it waits for the time one would take (:class:`ActorTiming`), one
call after another as a real actor would, and returns seeded fitness values of the right shape.

Real: the driver's code (strategy, the evaluator's split, dispatch, gather, update broadcast and
checksum comparison), the Ray runtime, one remote call and one object reference per logical call,
and the serialisation of every argument and result. Each host also holds a real small worker, built
by the run's factory from the run's config, that applies every update, so the checksums the driver
compares are real. Simulated: the time a large model takes and the fitness values.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from evolm.evaluators.dispatch import dumps, wire_bytes
from evolm.evaluators.ray_actor import EvaluationActor


@dataclass(frozen=True)
class ActorTiming:
    """Seconds one remote worker holding a ``parameters``-sized model spends per call.

    The defaults are stated figures for one H100-class GPU, not measured here (no GPU on this machine):
    forward at 1.0e6 tokens/s for a 100 M-parameter GPT (2 FLOP per parameter per token: 2e14 FLOP/s,
    about a fifth of bf16 dense peak), and noise regenerated and added at 1e11 values/s (a Philox
    normal written and added once is about 16 bytes of memory traffic: 1.6 TB/s, half of HBM3's).
    The checksum is evolm's: blake2b of the weights' bytes on the host, at the rate measured on this
    machine's CPU (0.6 GB/s; the copy from the GPU is left out).
    """

    parameters: int = 100_000_000
    tokens_per_individual: int = 16 * 64  # the reference fitness batch
    tokens_per_second: float = 1.0e6
    noise_values_per_second: float = 1.0e11
    checksum_bytes_per_second: float = 6.0e8
    bytes_per_parameter: int = 4  # float32 weights
    update_noise: bool = True  # False: an update costs only the checksum (the driver's worst case)

    def evaluate_seconds(self, individuals: int) -> float:
        """Apply an individual's noise, score the fitness batch, restore the base (a pass like the noise's)."""
        forward = self.tokens_per_individual / self.tokens_per_second
        return individuals * (forward + 2 * self.parameters / self.noise_values_per_second)

    def checksum_seconds(self) -> float:
        return self.parameters * self.bytes_per_parameter / self.checksum_bytes_per_second

    def update_seconds(self, seeds: int) -> float:
        """Regenerate and add each seed's noise (seed-encoded updates), then the checksum."""
        noise = seeds * self.parameters / self.noise_values_per_second if self.update_noise else 0.0
        return noise + self.checksum_seconds()


def simulated_fitness(genes, generation: int, objectives: int) -> tuple[float, ...]:
    """A fitness tuple that depends only on the genes and the generation (the same everywhere): values in
    [-1, 1) read from a hash of both, with no generator to build (the hosts make 10,000 a generation and
    share the driver's two cores)."""
    key = genes.tobytes() if isinstance(genes, np.ndarray) else repr(genes).encode()
    digest = hashlib.shake_256(b"simulated-fitness %d " % generation + key).digest(8 * objectives)
    return tuple(int.from_bytes(digest[i : i + 8], "little") / 2.0**63 - 1.0 for i in range(0, len(digest), 8))


def update_seeds(update) -> int:
    """How many noise regenerations applying ``update`` takes on a worker (0 for updates without seeds)."""
    coefficients = getattr(update, "coefficients", None)
    if coefficients is None:
        return len(getattr(update, "seeds", ()))
    return sum(1 for c in coefficients if c != 0.0)


def same(update, other) -> bool:
    """Whether two updates are equal by value (dataclasses of seeds and coefficients are)."""
    if other is None:
        return False
    try:
        return bool(update == other)
    except (TypeError, ValueError):  # arrays compare elementwise: not a single answer
        return False


def caller() -> int:
    """The index of the logical actor a host's call is for: the call's task name (``LogicalActor``), so
    that each call carries exactly the arguments an ``EvaluationActor``'s would (each costs the driver)."""
    return int(str(ray.get_runtime_context().get_task_name()).rpartition(":")[2])


class HostActor:
    """One real Ray actor playing many logical actors (each call's task name says which: :func:`caller`)."""

    def __init__(self, config, threads: int, device: str, factory, timing: ActorTiming):
        self.real = EvaluationActor(config, threads, device, factory)
        self.timing = timing
        self.free_at: dict[int, float] = {}  # when each logical actor finishes what it was given
        self.objectives = 0
        self.last_update: Any = None
        self.checksum = ""
        self.update_bytes, self.update_work, self.checksum_bytes = 0, 0.0, 0  # of the last update, once each
        self.traffic = self._zero()
        self.busy: dict[int, float] = {}  # simulated seconds of work per logical actor since the last take
        self.cpu_mark = time.process_time()

    @staticmethod
    def _zero() -> dict:
        # Bytes as the driver counts them (serialised arguments received, results sent), by kind.
        kinds = ("genes_received", "update_received", "fitness_sent", "checksums_sent", "other_received", "other_sent")
        times = {"late_seconds_max": 0.0, "busiest_actor_seconds": 0.0, "busy_seconds": 0.0, "host_cpu_seconds": 0.0}
        return {**dict.fromkeys(kinds, 0), "calls": 0, **times}

    async def _work(self, index: int, seconds: float) -> None:
        """Wait as logical actor ``index`` would work: after what it was given before, for ``seconds``."""
        now = time.monotonic()
        end = max(now, self.free_at.get(index, 0.0)) + seconds
        self.free_at[index] = end
        await asyncio.sleep(end - now)
        late = time.monotonic() - end  # how far this host fell behind the simulated clock
        self.traffic["late_seconds_max"] = max(self.traffic["late_seconds_max"], late)
        self.busy[index] = self.busy.get(index, 0.0) + seconds

    def _count(self, received: tuple[str, int], sent: tuple[str, int]) -> None:
        for kind, nbytes in (received, sent):
            self.traffic[kind] += nbytes
        self.traffic["calls"] += 1

    async def ready(self) -> dict:
        info = self.real.ready()
        self._count(("other_received", 0), ("other_sent", wire_bytes(info)))
        return info

    async def evaluate(self, genes_list, generation: int):
        result = await self._evaluate(genes_list, generation)
        self._count(("genes_received", wire_bytes((genes_list, generation))), ("fitness_sent", wire_bytes(result)))
        return result

    async def evaluate_chunk(self, work: bytes) -> bytes:
        result = dumps(await self._evaluate(*pickle.loads(work)))
        self._count(("genes_received", len(work)), ("fitness_sent", len(result)))
        return result

    async def _evaluate(self, genes_list, generation: int) -> tuple:
        if not self.objectives:  # the run's fitness shape, from one real evaluation on the small worker
            probe = self.real.evaluate(genes_list[:1], generation)[0][0]
            if not isinstance(probe, tuple):
                raise TypeError(f"simulated actors return plain fitness tuples; this fitness gives {type(probe)}")
            self.objectives = len(probe)
        await self._work(caller(), self.timing.evaluate_seconds(len(genes_list)))
        fitnesses = [simulated_fitness(genes, generation, self.objectives) for genes in genes_list]
        return fitnesses, len(genes_list) * self.timing.tokens_per_individual

    async def apply_update(self, update) -> str:
        if not same(update, self.last_update):  # the host's worker applies each update once
            self.checksum = self.real.apply_update(update)
            self.last_update = update
            self.update_bytes, self.update_work = wire_bytes(update), self.timing.update_seconds(update_seeds(update))
            self.checksum_bytes = wire_bytes(self.checksum)
        await self._work(caller(), self.update_work)
        self._count(("update_received", self.update_bytes), ("checksums_sent", self.checksum_bytes))
        return self.checksum

    async def sync_state(self) -> dict:
        state = self.real.sync_state()
        self._count(("other_received", 0), ("other_sent", wire_bytes(state)))
        return state

    async def load_sync_state(self, state) -> str:
        self.last_update = None
        self.checksum = self.real.load_sync_state(state)
        self._count(("other_received", wire_bytes(state)), ("checksums_sent", wire_bytes(self.checksum)))
        return self.checksum

    async def take_traffic(self) -> dict:
        """Since the last take: bytes by kind (as the driver counts them), calls, the largest lag behind
        the simulated clock, and the simulated seconds of work: all logical actors' and the busiest one's."""
        traffic, self.traffic = self.traffic, self._zero()
        traffic["busiest_actor_seconds"] = max(self.busy.values(), default=0.0)
        traffic["busy_seconds"] = sum(self.busy.values())
        traffic["host_cpu_seconds"], self.cpu_mark = time.process_time() - self.cpu_mark, time.process_time()
        self.busy = {}
        return traffic


class LogicalActor:
    """What the evaluator holds for one actor: the calls of an ``EvaluationActor``, answered by a host,
    each named ``method:index`` (the same arguments and one remote call, as a real actor's)."""

    def __init__(self, host, index: int):
        self.host, self.index = host, index
        for name in ("ready", "evaluate", "evaluate_chunk", "apply_update", "sync_state", "load_sync_state"):
            setattr(self, name, getattr(host, name).options(name=f"{name}:{index}"))


class SimulatedActors:
    """Stands in for ``ray.remote(EvaluationActor)``: each actor started is a :class:`LogicalActor`,
    the n-th played by host ``n % hosts``. Hosts start with the first actor, from its arguments."""

    def __init__(self, hosts: int = 2, timing: ActorTiming | None = None, max_concurrency: int = 10_000):
        self.hosts_wanted = max(1, hosts)
        self.timing = timing or ActorTiming()
        self.max_concurrency = max_concurrency
        self.hosts: list = []
        self.started = 0

    def options(self, **resources) -> SimulatedActors:
        # A logical actor holds no resources of its own (its host holds none either): the cluster's
        # CPU count only has to pass the evaluator's check that it has room for every actor.
        return self

    def remote(self, config, threads: int, device: str, factory) -> LogicalActor:
        if not self.hosts:
            host_class = ray.remote(HostActor)
            self.hosts = [
                host_class.options(num_cpus=0, max_restarts=0, max_concurrency=self.max_concurrency).remote(
                    config, threads, device, factory, self.timing
                )
                for _ in range(self.hosts_wanted)
            ]
        actor = LogicalActor(self.hosts[self.started % len(self.hosts)], self.started)
        self.started += 1
        return actor

    def take_traffic(self) -> dict:
        """Every host's :meth:`HostActor.take_traffic`, summed (lag and busiest actor: the largest), with
        ``received`` and ``sent`` totals (the driver's bytes sent and received)."""
        total = HostActor._zero()
        for traffic in ray.get([host.take_traffic.remote() for host in self.hosts]):
            for key, value in traffic.items():
                largest = key in ("late_seconds_max", "busiest_actor_seconds")
                total[key] = max(total[key], value) if largest else total[key] + value
        total["received"] = sum(v for k, v in total.items() if k.endswith("_received"))
        total["sent"] = sum(v for k, v in total.items() if k.endswith("_sent"))
        return total

    def close(self) -> None:
        for host in self.hosts:
            try:
                ray.kill(host)
            except Exception:  # already gone
                pass
        self.hosts = []
