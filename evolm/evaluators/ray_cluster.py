"""Getting a Ray runtime for evolm's actors: start one of our own on this machine, bound to the
loopback interface with token authentication on, or join an existing cluster after checking, within
seconds, that the address answers like a Ray head and that the token is accepted.

With :mod:`evolm.evaluators.ray` and :mod:`evolm.evaluators.ray_actor`, the only modules in evolm that import ray. Cluster figures come
from Ray's public API (``ray.cluster_resources``, ``ray.nodes``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from typing import Any

import ray
import ray.exceptions

from evolm.errors import UsageError

CONNECT_SECONDS = 5.0  # TCP connect to a cluster address
HANDSHAKE_SECONDS = 5.0  # the address must answer as a gRPC (HTTP/2) server, as Ray's GCS does
LOOPBACK = "127.0.0.1"
GPU_SHARE_PRECISION = 1e-4  # Ray counts resources in units of 0.0001
_COMMON: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING)


def refresh_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its native config when imported; re-read it, as Ray's own token
    setup does (no public call exists for this)."""
    try:
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
    except (ImportError, AttributeError):  # another Ray version: it reads the variable at ray.init
        pass


def _token_available() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return bool(
        os.environ.get("RAY_AUTH_TOKEN")
        or (path and os.path.exists(path))
        or os.path.exists(os.path.expanduser("~/.ray/auth_token"))
    )


def require_token_auth() -> None:
    """Token authentication stays on: Ray 2.60 turns it on for a new local runtime, not when joining
    by address, so evolm asks for it explicitly unless the user set RAY_AUTH_MODE themselves."""
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"  # inherited by the processes Ray starts
        refresh_ray_config()


@contextlib.contextmanager
def _node_on_loopback():
    """While ``ray.init`` starts a node: make Ray keep a loopback node address.

    Ray 2.60 binds its servers (GCS, raylet, object manager, every worker's gRPC port, the runtime-env
    agent) to the loopback interface only when the node's IP is a loopback address, and otherwise to
    all interfaces (``*:port``). ``ray.init(_node_ip_address="127.0.0.1")`` alone is rewritten into the
    machine's outward address unless Ray thinks multi-node clusters are disabled (its
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER setting, read once at import). No public option says "this
    node is local only", so that one switch is turned off for the duration of ``ray.init``; joining a
    cluster never goes through here. tests/test_ray.py checks every listening socket.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):  # another Ray version
        yield
        return
    saved = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved


def start_local_runtime(num_cpus: int, num_gpus: int | None = None) -> None:
    """A Ray runtime of our own on this machine: loopback only, token authentication on (a fresh
    token, kept in this process's environment and inherited by the processes Ray starts, when the
    user has none). ``num_gpus`` None: the GPUs Ray detects; a number declares that many."""
    require_token_auth()
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and not _token_available():
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        refresh_ray_config()
    with _node_on_loopback():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address=LOOPBACK, **_COMMON)


def stop_local_runtime() -> None:
    """Stop the runtime :func:`start_local_runtime` started in this process (no-op when none runs)."""
    ray.shutdown()


def connect(settings, num_cpus: int) -> bool:
    """Share a runtime the process already holds, else start or join one; True when evolm made it."""
    if ray.is_initialized():  # a caller (a test, a notebook) already holds a runtime: share it
        return False
    if not settings.ray_address:
        start_local_runtime(num_cpus)
        return True
    require_token_auth()
    where = f"config field evaluator.ray_address {settings.ray_address}"
    address = check_address(settings.ray_address)
    if address is not None:
        _check_token(where, address)
    try:
        ray.init(address=address or settings.ray_address, **_COMMON)
    except ray.exceptions.AuthenticationError as error:
        raise UsageError(f"{where}: {auth_hint(error)}") from None
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "auth" in str(error).lower() or "token" in str(error).lower():
            first = auth_hint(error)
        raise UsageError(f"{where}: cannot join the Ray cluster: {first}") from None
    return True


def check_gpus_per_worker(gpus: float) -> float:
    """``evaluator.gpus_per_worker`` as Ray can place it: 0 (CPU actors), a share of one GPU (actors
    then share it: 0.25 puts four on each GPU) or a whole number of GPUs; anything else is one UsageError."""
    field = "config field evaluator.gpus_per_worker"
    if not math.isfinite(gpus) or gpus < 0:
        raise UsageError(f"{field} must be 0 or positive, got {gpus:g}")
    if gpus > 1 and gpus != int(gpus):
        raise UsageError(f"{field} is {gpus:g}: Ray gives an actor a share of one GPU (at most 1) or whole GPUs")
    if 0 < gpus < GPU_SHARE_PRECISION:
        raise UsageError(f"{field} is {gpus:g}: Ray's smallest share of a GPU is {GPU_SHARE_PRECISION:g}")
    return gpus


def actor_device(gpus: float) -> str:
    """Where an actor's worker keeps its model: ``cuda`` when the actor holds GPUs (Ray sets the actor's
    CUDA_VISIBLE_DEVICES to the GPUs it was given, so ``cuda`` there is its own), else ``cpu``."""
    return "cuda" if gpus > 0 else "cpu"


def actor_options(threads: int, gpus: float) -> dict:
    """Ray options of one evaluation actor: ``threads`` CPUs and ``gpus`` GPUs (a fraction shares one GPU
    among actors). max_restarts=0: a process Ray restarted would rebuild its worker from the config,
    at the initial weights; the evaluator starts, checks and synchronises replacements itself."""
    return dict(num_cpus=threads, num_gpus=gpus, max_restarts=0, scheduling_strategy="SPREAD")


def gpu_actor_capacity(gpus: float) -> int:
    """How many actors of ``gpus`` GPUs the live nodes' GPUs hold: Ray puts an actor's share of a GPU on
    one GPU (five actors of 0.4 need three GPUs, not two) and its whole GPUs on one node."""
    per_node = [node.get("Resources", {}).get("GPU", 0.0) for node in ray.nodes() if node.get("Alive")]
    if gpus <= 1:
        return sum(int(total + 1e-9) * int(1 / gpus + 1e-9) for total in per_node)
    return sum(int(total / gpus + 1e-9) for total in per_node)


def actor_count(workers: int, threads: int, gpus: float) -> int:
    """How many actors to start: ``workers``, or as many as the cluster has room for when 0."""
    check_gpus_per_worker(gpus)
    resources = ray.cluster_resources()
    cpus, gpu_total = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus and gpu_total + 1e-9 < gpus:
        has = f"{gpu_total:g} GPUs" if gpu_total else "no GPU"
        raise UsageError(
            f"config field evaluator.gpus_per_worker: {gpus:g} GPUs per actor, but the Ray cluster has {has}"
        )
    capacity = gpu_actor_capacity(gpus) if gpus else 0
    if workers <= 0:  # joining a cluster without --workers: as many actors as it has room for
        workers = int(cpus // threads)
        if gpus:
            workers = min(workers, capacity)
    if workers <= 0:
        raise UsageError(
            f"the Ray cluster has {cpus:g} CPUs and {gpu_total:g} GPUs: not enough for one actor "
            f"({threads} CPUs, {gpus:g} GPUs)"
        )
    if workers * threads > cpus + 1e-9:
        raise UsageError(
            f"config field evaluator.workers: {workers} actors of {threads} CPUs need "
            f"{workers * threads} CPUs; the Ray cluster has {cpus:g}"
        )
    if gpus and workers > capacity:
        raise UsageError(
            f"config field evaluator.gpus_per_worker: {workers} actors of {gpus:g} GPUs do not fit on the "
            f"Ray cluster's {gpu_total:g} GPUs (they hold {capacity}: an actor's share of a GPU is on one GPU)"
        )
    return workers


def check_address(address: str) -> str | None:
    """The cluster's ``HOST:PORT`` if something there answers like a Ray head, else a UsageError;
    None for ``auto`` without RAY_ADDRESS (``ray.init`` finds the cluster this machine runs).

    Ray itself retries an unreachable head for many minutes; evolm checks first, so a wrong address
    is a one-line error within seconds (well under 30 s).
    """
    where = f"config field evaluator.ray_address {address}"
    text = address.strip()
    if text == "auto":
        text = os.environ.get("RAY_ADDRESS", "").strip()
        if not text or text == "auto":
            return None
    if text == "local" or text.startswith("ray://"):
        raise UsageError(f"{where}: give auto or HOST:PORT of a running Ray cluster")
    match = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", text)
    if not match:
        raise UsageError(f"{where}: expected HOST:PORT")
    host, port = match.group(1), int(match.group(2))
    try:
        connection = socket.create_connection((host, port), timeout=CONNECT_SECONDS)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UsageError(f"{where}: no Ray cluster answers at {host}:{port} ({reason})") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true") and not _speaks_http2(connection):
            raise UsageError(f"{where}: {host}:{port} answers but is not a Ray cluster head (no gRPC)")
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


def _check_token(where: str, address: str) -> None:
    """With token authentication on, a missing or wrong token is a one-line error within a second
    (``ray.init`` would retry for about 20 s, logging every attempt)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if not os.environ.get("RAY_AUTH_TOKEN") and path:
            if not os.path.isfile(path) or not open(path).read().strip():
                # Ray aborts the whole process on an unreadable token file: say so first.
                raise UsageError(f"{where}: RAY_AUTH_TOKEN_PATH {path} does not exist or is empty")
        if not _token_available():
            raise UsageError(
                f"{where}: Ray token authentication is on but no token was found; give the cluster's token "
                f"with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (on the head: ray get-auth-token)"
            )
    # One GCS call, no retries: what `ray health-check` does. Ray has no public single-attempt probe;
    # without this client (another Ray version) ray.init reports a wrong token itself, only slower.
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
    except ImportError:
        return
    with _native_stderr_swallowed():
        try:
            GcsClient(address=address)
        except ray.exceptions.AuthenticationError as error:
            raise UsageError(f"{where}: {auth_hint(error)}") from None
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


def auth_hint(error) -> str:
    return (
        "Ray token authentication failed (" + str(error).strip().splitlines()[0][:120] + "); "
        "give the cluster's token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token "
        "(on the head: ray get-auth-token), with RAY_AUTH_MODE=token"
    )


def task_error(error: ray.exceptions.RayTaskError) -> BaseException:
    """The exception an actor raised, re-raised on the driver (a UsageError stays one)."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, UsageError):
        return UsageError(f"on a Ray actor: {cause}")
    try:
        return error.as_instanceof_cause()
    except Exception:
        return error


def startup_error(error) -> BaseException:
    missing = re.search(r"No module named '([^']+)'", str(error))
    if missing:  # the worker factory refers to code the actors cannot import (e.g. a user's model or fitness)
        return UsageError(
            f"Ray actors cannot import module {missing.group(1)!r}, which the model, adapter or fitness "
            f"comes from: make it importable on every node (install it, or run from its folder), or define "
            f"them in the script you run (__main__), whose definitions travel by value"
        )
    text = str(error).strip().splitlines()
    return RuntimeError(f"Ray actors could not start: {text[0] if text else type(error).__name__}")
