"""Evaluation on Ray actors, on a real Ray runtime: the same metrics as in-process (also after a
killed actor, a drifted actor, a refinement that drifts, or an interrupted and resumed run), a
two-node cluster, bytes that do not grow with the model, vector genes sent as arrays, a runtime of
evolm's own listening on loopback only, and a one-line error for a bad address, token or device mix.

One local runtime (2 CPUs) serves the whole module; the cluster and loopback tests start their own.
Ray is a hard dependency: nothing here skips.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import REPO, TINY, run_cli

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.errors import UsageError
from evolm.refine import RefineUpdate

# TINY as config overrides, fewer generations: enough for updates to move the center several times.
GENERATIONS = 5
TINY_OVERRIDES = [
    (TINY[i + 1].split("=", 1)[0], TINY[i + 1].split("=", 1)[1]) for i, flag in enumerate(TINY) if flag == "--set"
]
TINY_OVERRIDES += [("strategy.population_size", "16"), ("generations", str(GENERATIONS))]


def is_wall_clock(key: str) -> bool:
    # checkpoint_bytes too: the checkpoint holds the run's wall time, whose digits vary by a byte or so.
    return key in ("wall_seconds", "compute_seconds", "checkpoint_seconds", "checkpoint_bytes") or key.startswith(
        "evaluator_"
    )


def comparable(rows):
    return [{k: v for k, v in row.items() if not is_wall_clock(k)} for row in rows]


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def tiny_config(strategy="es", genome="seed", workers=0, extra=()):
    overrides = TINY_OVERRIDES + [
        ("strategy.name", strategy),
        ("genome.name", genome),
        ("evaluator.workers", str(workers)),
    ]
    return build_config(None, overrides + list(extra))


def run_engine(config, out_dir):
    from evolm.engine import run

    run(config, out_dir=out_dir, progress=False, log=lambda *args: None)
    return read_metrics(out_dir)


@pytest.fixture(scope="module")
def local_metrics(tmp_path_factory):
    """In-process runs, computed once per (strategy, genome)."""
    cache = {}

    def get(strategy, genome):
        if (strategy, genome) not in cache:
            cache[strategy, genome] = run_engine(
                tiny_config(strategy, genome), tmp_path_factory.mktemp(f"local-{strategy}-{genome}")
            )
        return cache[strategy, genome]

    return get


PAIRS = [("es", "seed"), ("ga", "seed"), ("ga", "lowrank")]


@pytest.mark.parametrize("strategy, genome", PAIRS, ids=[f"{s}-{g}" for s, g in PAIRS])
def test_ray_gives_the_same_metrics_as_in_process(ray_runtime, local_metrics, tmp_path, strategy, genome):
    rows = run_engine(tiny_config(strategy, genome, workers=2), tmp_path / "ray")
    assert comparable(rows) == comparable(local_metrics(strategy, genome))
    assert [row["generation"] for row in rows] == list(range(GENERATIONS))
    assert all(row["evaluator_actors_alive"] == 2 and row["evaluator_bytes_sent"] > 0 for row in rows)
    assert all(row["evaluator_individuals_per_second"] > 0 for row in rows)


def test_novelty_on_ray_is_measured_against_the_whole_population(ray_runtime, tmp_path):
    """Each actor scores half the population; novelty, finished on the driver, still sees everyone."""
    extra = [
        ("fitness.terms", "likelihood=1,diversity=0.5,novelty=1"),
        ("fitness.prompts", "4"),
        ("fitness.generate_tokens", "12"),
        ("generations", "3"),
    ]
    local = run_engine(tiny_config(extra=extra), tmp_path / "local")
    rows = run_engine(tiny_config(workers=2, extra=extra), tmp_path / "ray")
    assert comparable(rows) == comparable(local)
    assert all(0.0 < row["novelty_mean"] <= 1.0 for row in rows)


def test_killing_an_actor_mid_generation_changes_nothing(ray_runtime, local_metrics, tmp_path, monkeypatch):
    import evolm.engine

    made = []
    killed = []

    def make_evaluator(config, worker):
        evaluator = real_make_evaluator(config, worker)

        def kill_after_first_chunk(evaluator, generation, chunk_index):
            if generation == 2 and not killed:  # other chunks are still in flight on both actors
                killed.append(evaluator.actors[0])
                ray.kill(evaluator.actors[0])

        evaluator.on_chunk_done = kill_after_first_chunk
        made.append(evaluator)
        return evaluator

    real_make_evaluator = evolm.engine.make_evaluator
    monkeypatch.setattr(evolm.engine, "make_evaluator", make_evaluator)
    rows = run_engine(tiny_config("es", "seed", workers=2), tmp_path / "killed")
    assert killed, "the hook never ran"
    stats = made[0].stats()
    assert stats["chunks_rerun"] >= 1 and stats["actors_replaced"] == 1, stats
    assert comparable(rows) == comparable(local_metrics("es", "seed"))


def test_interrupted_ray_run_resumes_to_the_same_metrics(ray_runtime, local_metrics, tmp_path, monkeypatch):
    """Interrupted in generation 2 (as by Ctrl-C), resumed on fresh actors: they are built at the
    initial weights and resynchronised from the driver's restored checkpoint."""
    import evolm.engine

    real_make_evaluator = evolm.engine.make_evaluator

    def interrupting(config, worker):
        evaluator = real_make_evaluator(config, worker)

        def interrupt(evaluator, generation, chunk_index):
            if generation == 2:
                raise KeyboardInterrupt

        evaluator.on_chunk_done = interrupt
        return evaluator

    monkeypatch.setattr(evolm.engine, "make_evaluator", interrupting)
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run_engine(tiny_config("es", "seed", workers=2, extra=[("checkpoint_every", "1")]), out)
    monkeypatch.setattr(evolm.engine, "make_evaluator", real_make_evaluator)
    evolm.engine.resume(out, progress=False, log=lambda *args: None)
    rows = read_metrics(out)
    assert comparable(rows) == comparable(local_metrics("es", "seed"))
    assert rows[2]["evaluator_resyncs"] == 2  # both new actors caught up with the checkpoint


def test_replacement_actor_is_synchronised_from_the_driver(ray_runtime):
    """An actor lost between generations is replaced by one built from the config (initial weights),
    resynchronised to the driver's moved center before it scores anything."""
    from evolm.evaluators import LocalEvaluator
    from evolm.evaluators.ray import RayEvaluator
    from evolm.strategies import make_strategy

    config = tiny_config("es", "seed", workers=2)
    reference, driver = worker_from_config(config), worker_from_config(config)
    local, remote = LocalEvaluator(reference), RayEvaluator(config, driver)
    try:
        strategy = make_strategy(config, driver)
        for generation in range(3):
            population = strategy.ask(generation)
            expected = local.evaluate(population, generation)
            assert remote.evaluate(population, generation) == expected
            for individual, fitness in zip(population, expected):
                individual.fitness.values = fitness
            _, update = strategy.tell(population, generation)
            local.apply_update(update)
            remote.apply_update(update)
            if generation == 0:
                ray.kill(remote.actors[1])
        remote.wait_for_actors()
        population = strategy.ask(3)
        expected = local.evaluate(population, 3)
        assert remote.evaluate(population, 3) == expected
        stats = remote.stats()
        assert stats["actors_alive"] == 2 and stats["actors_replaced"] == 1 and stats["resyncs"] >= 1, stats
        # An actor whose weights drift is caught by the checksum after the next update and resynchronised.
        for individual, fitness in zip(population, expected):
            individual.fitness.values = fitness
        _, update = strategy.tell(population, 3)
        drifted = driver.sync_state()
        drifted["tensors"][0].add_(1.0)
        ray.get(remote.actors[0].load_sync_state.remote(drifted))
        local.apply_update(update)
        remote.apply_update(update)
        assert remote.stats()["resyncs"] == stats["resyncs"] + 1
        population = strategy.ask(4)
        assert remote.evaluate(population, 4) == local.evaluate(population, 4)
        # Weights changed on the driver other than by an update (a restored checkpoint): actors follow.
        restored = driver.sync_state()
        restored["tensors"][0].mul_(0.5)
        driver.load_sync_state(restored)
        reference.load_sync_state(restored)
        population = strategy.ask(5)
        assert remote.evaluate(population, 5) == local.evaluate(population, 5)
        assert remote.forward_tokens == reference.forward_tokens
        checksums = ray.get([actor.ready.remote() for actor in remote.actors])
        assert {info["checksum"] for info in checksums} == {driver.checksum()} == {reference.checksum()}
    finally:
        remote.close()


def test_bytes_per_generation_do_not_grow_with_the_model(ray_runtime):
    from evolm.evaluators.ray import RayEvaluator
    from evolm.models import count_parameters
    from evolm.strategies import make_strategy

    sent, sizes = [], []
    for width, ff in ((32, 64), (128, 512)):
        config = tiny_config("es", "seed", workers=2, extra=[("model.width", str(width)), ("model.ff", str(ff))])
        worker = worker_from_config(config)
        sizes.append(count_parameters(worker.model))
        evaluator = RayEvaluator(config, worker)
        try:
            strategy = make_strategy(config, worker)
            population = strategy.ask(0)
            for individual, fitness in zip(population, evaluator.evaluate(population, 0)):
                individual.fitness.values = fitness
            evaluator.apply_update(strategy.tell(population, 0)[1])
            sent.append(evaluator.stats()["bytes_sent"])
        finally:
            evaluator.close()
    assert sizes[1] >= 10 * sizes[0], sizes
    assert abs(sent[1] - sent[0]) < 0.1 * sent[0], (sizes, sent)
    assert sent[1] / 16 < 1024  # bytes per individual


def test_vector_genes_travel_as_one_array(ray_runtime):
    """A vector genome's chunk crosses to an actor as one float32 array (4 bytes a gene), not as a
    list of pickled NumPy scalars; fitness is the same as in-process."""
    from evolm.evaluators import LocalEvaluator
    from evolm.evaluators.ray import RayEvaluator
    from evolm.strategies import make_strategy

    config = tiny_config("ga", "vector", workers=2, extra=[("genome.params", "bias|norm")])
    reference, driver = worker_from_config(config), worker_from_config(config)
    genes = reference.space.numel
    evaluator = RayEvaluator(config, driver)
    try:
        population = make_strategy(config, driver).ask(0)
        assert isinstance(population[0], np.ndarray) and len(population[0]) == genes
        assert evaluator.evaluate(population, 0) == LocalEvaluator(reference).evaluate(population, 0)
        sent = evaluator.stats()["bytes_sent"]
    finally:
        evaluator.close()
    # Genes as float32 plus a little per chunk (framing, results); a list of NumPy scalars took ~8x.
    assert sent < 1.5 * 4 * genes * len(population), (sent, genes, len(population))


def test_actors_on_another_device_type_than_the_driver_are_refused():
    """CPU and CUDA noise generators differ: a CPU driver with GPU actors is one line, before any
    runtime starts (no GPU needed to check it)."""
    from evolm.evaluators.ray import RayEvaluator

    config = tiny_config("es", "seed", workers=2, extra=[("evaluator.gpus_per_worker", "1")])
    with pytest.raises(UsageError) as caught:
        RayEvaluator(config, worker_from_config(config))
    message = str(caught.value)
    assert "\n" not in message and "gpus_per_worker" in message and "cuda" in message and "cpu" in message, message


class DriftingRefinement:
    """A worker factory: ``worker_from_config``, except in the one Ray actor that claims ``marker``
    first, where every refinement leaves its weights slightly off, as CUDA's nondeterministic
    embedding backward can. Pickled by reference (this module), so actors build it themselves."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, config):
        worker = worker_from_config(config)
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() and self._claim():
            exact = worker.apply_update

            def apply_update(update):
                exact(update)
                if isinstance(update, RefineUpdate):
                    worker.space.tensors[0].add_(1e-4)
                    worker.space.commit()

            worker.apply_update = apply_update
        return worker

    def _claim(self) -> bool:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True


def test_an_actor_that_drifts_in_refinement_is_resynchronised(ray_runtime, tmp_path):
    """After a refinement update the evaluator compares every actor's checksum with the driver's and
    resynchronises the one that drifted: the run equals an in-process run with the same refinement."""
    from ray import cloudpickle

    from evolm.engine import run

    extra = [("refine.every", "2"), ("refine.steps", "2"), ("generations", "4")]
    marker = str(tmp_path / "drifter")
    factory = DriftingRefinement(marker)
    run(
        tiny_config(extra=extra),
        out_dir=tmp_path / "local",
        progress=False,
        log=lambda *a: None,
        worker_factory=factory,
    )
    assert not os.path.exists(marker)  # no actor in-process: nothing drifted
    # Actors cannot import this test module: its factory travels by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        run(
            tiny_config(workers=2, extra=extra),
            out_dir=tmp_path / "ray",
            progress=False,
            log=lambda *a: None,
            worker_factory=factory,
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    local, rows = read_metrics(tmp_path / "local"), read_metrics(tmp_path / "ray")
    assert os.path.exists(marker), "no actor took the drifting role"
    assert comparable(rows) == comparable(local)
    # Two refinements (generations 1 and 3), one drifted actor each time, caught and reloaded.
    assert [row["evaluator_resyncs"] for row in rows] == [0, 1, 1, 2], [row["evaluator_resyncs"] for row in rows]


LISTENERS = """
import json, os, sys
import ray, psutil
from evolm.config import build_config
from evolm.evaluators.ray import RayEvaluator
from evolm.assembly import worker_from_config

config = build_config(None, {overrides!r})
evaluator = RayEvaluator(config, worker_from_config(config))  # no runtime in this process: evolm starts its own
assert evaluator._owns_runtime and len(evaluator.actors) == 2
sockets = []
for process in [psutil.Process()] + psutil.Process().children(recursive=True):
    try:
        for connection in process.net_connections(kind="inet"):
            if connection.status == psutil.CONN_LISTEN:
                sockets.append([process.name(), connection.laddr.ip, connection.laddr.port])
    except psutil.Error:
        pass
evaluator.close()
print(json.dumps({{"sockets": sockets, "auth_mode": os.environ.get("RAY_AUTH_MODE")}}))
"""


def test_a_runtime_evolm_starts_listens_on_loopback_only(tmp_path):
    """Every TCP port of the runtime evolm starts for itself (GCS, raylet, object manager, runtime-env
    agent, each actor) is bound to the loopback interface; token authentication stays on."""
    overrides = TINY_OVERRIDES + [("evaluator.workers", "2")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-c", LISTENERS.format(overrides=overrides)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    sockets = found["sockets"]
    assert found["auth_mode"] == "token"
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and sum("EvaluationActor" in n for n in names) >= 1, sockets
    exposed = [s for s in sockets if s[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"listening beyond loopback: {exposed}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_address_is_one_line_and_exit_2(tmp_path):
    started = time.monotonic()
    result = run_cli(
        "run",
        *TINY,
        "--ray-address",
        f"127.0.0.1:{free_port()}",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ray_address" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 30


def test_address_that_is_not_a_ray_head_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as silent:  # accepts connections and never speaks
        silent.bind(("0.0.0.0", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = run_cli(
            "run", *TINY, "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "out"), "--quiet", timeout=120
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a Ray cluster" in lines[0], result.stderr
    assert time.monotonic() - started < 30


# ---- a two-node cluster on this machine --------------------------------------------------------

RAY = str(Path(sys.executable).with_name("ray"))
NODE_LISTING = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR")
print(json.dumps({{"nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]], "cpus": ray.cluster_resources().get("CPU")}}))
"""


def start_node(arguments, log_path, env, timeout=90):
    """``ray start --block`` in its own session; returns once the node reports it is up."""
    log = open(log_path, "w")
    process = subprocess.Popen(
        [RAY, "start", "--block", "--log-style=record", *arguments],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in Path(log_path).read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed:\n{Path(log_path).read_text()[-3000:]}")
        time.sleep(0.3)
    return process


def stop_nodes(processes) -> None:
    """Stop the nodes this test started, by their process ids (``ray stop`` would stop every Ray
    runtime on the machine, this module's own and anyone else's)."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in reversed(processes):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the session this test created for it
            process.wait(timeout=10)


@pytest.mark.slow
def test_cli_joins_a_two_node_cluster(tmp_path, monkeypatch):
    token = secrets.token_hex(32)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PYTHONPATH=str(REPO))
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Ray's socket paths must stay under 108 bytes: a short folder of our own, not pytest's long tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="evolm-ray-", dir="/tmp")
    node = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--disable-usage-stats",
        "--object-store-memory=80000000",
        f"--temp-dir={temp_dir}",
    ]
    processes = []
    try:
        processes.append(
            start_node(["--head", f"--port={port}", "--include-dashboard=false", *node], tmp_path / "head.log", env)
        )
        processes.append(start_node([f"--address={address}", *node], tmp_path / "node.log", env))
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        out = tmp_path / "run"
        result = run_cli(
            "run",
            *TINY,
            "--generations",
            "3",
            "--ray-address",
            address,
            "--workers",
            "2",
            "--out",
            str(out),
            "--quiet",
            timeout=240,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = read_metrics(out)
        assert len(rows) == 3 and all(
            row["evaluator_actors_alive"] == 2 and row["evaluator_nodes"] == 2 for row in rows
        ), rows[-1]
        listing = subprocess.run(
            [sys.executable, "-c", NODE_LISTING.format(address=address)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listing.returncode == 0, listing.stderr[-3000:]
        found = json.loads(listing.stdout.strip().splitlines()[-1])
        assert len(found["nodes"]) == 2 and found["cpus"] == 2, found  # the actors ran on both (evaluator_nodes)
        # Without the cluster's token, joining fails with one line, not a hang.
        monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        wrong = run_cli(
            "run", *TINY, "--ray-address", address, "--out", str(tmp_path / "wrong"), "--quiet", timeout=120
        )
        assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr[-3000:]
    finally:
        stop_nodes(processes)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_task_on_ray_gives_the_same_metrics_as_in_process(ray_runtime, tmp_path):
    """Tasks normalise rewards per prompt on the driver: actors send per-prompt values, nothing else differs."""
    extra = [("task.name", "arithmetic"), ("task.batch", "8"), ("task.heldout", "32"), ("generations", "3")]
    local = run_engine(tiny_config(extra=extra), tmp_path / "local")
    rows = run_engine(tiny_config(workers=2, extra=extra), tmp_path / "ray")
    assert comparable(rows) == comparable(local)
    assert all("train_reward" in row for row in rows)
    assert [row["generation"] for row in rows if "reward" in row] == [0, 2]  # measured: the first and the last


def test_a_reward_callable_reaches_every_actor(ray_runtime, tmp_path):
    """evolve(reward=callable) on Ray: the function is shipped to the actors; the same metrics as in-process."""
    import evolm

    settings = dict(TINY_OVERRIDES)
    settings.update({"generations": "2", "task.batch": "8", "task.heldout": "16"})
    overrides = [f"{key}={value}" for key, value in settings.items()]
    ends_in_e = lambda prompts, completions: [float(c.endswith("e")) for c in completions]  # noqa: E731
    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        evolm.evolve("gpt", reward=ends_in_e, overrides=overrides, workers=workers, out=out, log=lambda *a: None)
        runs[workers] = read_metrics(out)
    assert comparable(runs[2]) == comparable(runs[0])
