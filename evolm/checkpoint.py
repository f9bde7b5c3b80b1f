"""Atomic checkpoints and safe loading: everything a run needs to resume exactly, and nothing that runs code.

A checkpoint is a folder ``RUN_DIR/checkpoint/`` of three files:

* ``tensors.safetensors``: every tensor (model weights, optimiser moments, ...), read with safetensors;
* ``state.json``: everything else (strategy state, population genes, hall of fame), plain JSON;
* ``manifest.json``: the format, the number of ``metrics.jsonl`` lines the checkpoint covers, and the
  size and SHA-256 of the other two files.

Writing never touches the last good checkpoint until the new one is complete: the files go to a fresh
``checkpoint.tmp-*`` folder and are fsynced, then ``checkpoint`` is renamed to ``checkpoint.old``, the new
folder to ``checkpoint``, and ``checkpoint.old`` is removed. A crash at any instant leaves ``checkpoint``
or ``checkpoint.old`` complete, and :func:`load_checkpoint` takes whichever is.

The tensor file is streamed tensor by tensor (:func:`write_safetensors`): saving adds no copy of the
weights to the process's memory, only the bytes of one tensor at a time for a tensor not on the CPU.
No process-wide RNG state is saved: evolm never draws from one across generations (see
:mod:`evolm.seeding`), so a resumed run needs none, and restoring one would overwrite its caller's.

Loading reads only those three names, through safetensors and ``json``: never pickle or ``torch.load``.
Bytes are verified against the manifest before they are parsed, and every problem is a one-line
:class:`~evolm.errors.UsageError` naming the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from evolm.errors import UsageError

CHECKPOINT = "checkpoint"
CHECKPOINT_OLD = "checkpoint.old"
TEMPORARY_PREFIX = "checkpoint.tmp-"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
FORMAT = "evolm-checkpoint"
VERSION = 1
_DATA_FILES = (TENSORS_FILE, STATE_FILE)
_MANIFEST_LIMIT = 1 << 20  # a manifest is a few hundred bytes; refuse to parse anything huge


# --------------------------------------------------------------------------------------------------
# Writing


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _rename(source: Path, target: Path) -> None:
    os.rename(source, target)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# safetensors' dtype names (its format specification); a dtype not listed cannot be saved.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
}


def _check_tensors(tensors: dict) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, dict):
        raise TypeError(f"checkpoint payload 'tensors' must be a dict of tensors, got {type(tensors).__name__}")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"checkpoint tensor {name!r} must be a torch.Tensor under a string name")
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise TypeError(f"checkpoint tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold")
    return tensors


def _safetensors_header(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> tuple[bytes, list[str]]:
    """The length-prefixed JSON header and the order the data follows it in.

    Larger elements first, as safetensors' own writer does: with the header padded to 8 bytes every
    tensor then starts at a multiple of its element size, so readers may map it without copying.
    """
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, order


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's little-endian bytes: a view of its own memory for a contiguous CPU tensor, else one copy of it."""
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()  # one tensor at a time: the only copy a save makes
    tensor = tensor.contiguous().reshape(-1)
    if tensor.numel() == 0:
        return memoryview(b"")
    return memoryview(tensor.view(torch.uint8).numpy())


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> tuple[int, str]:
    """Write ``tensors`` as a safetensors file, streaming one tensor at a time; returns (bytes, SHA-256 hex).

    safetensors' own ``save``/``save_file`` first build every tensor's bytes in memory (a second copy
    of the weights, and a third in ``save``'s returned ``bytes``). The format is simple enough to
    stream: an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and
    byte range, then the raw little-endian bytes. Tensors that share storage (tied weights) are
    written twice, as safetensors' loaders expect. The file is fsynced before returning.
    """
    if sys.byteorder != "little":  # torch runs on little-endian machines only; say so rather than write a wrong file
        raise RuntimeError("evolm writes safetensors files on little-endian machines only")
    tensors = _check_tensors(tensors)
    header, order = _safetensors_header(tensors, metadata)
    digest = hashlib.sha256(header)
    size = len(header)
    with open(path, "wb") as handle:
        handle.write(header)
        for name in order:
            data = _raw_bytes(tensors[name])
            handle.write(data)
            digest.update(data)
            size += data.nbytes
        handle.flush()
        os.fsync(handle.fileno())
    return size, digest.hexdigest()


def save_checkpoint(run_dir: str | Path, payload: dict) -> Path:
    """Write ``payload`` as ``run_dir/checkpoint`` atomically; returns the checkpoint folder.

    ``payload`` is ``{"tensors": {name: tensor}, "state": JSON-serialisable dict, "metrics_lines": int}``.
    The metrics file must already hold (and have flushed) ``metrics_lines`` lines.
    """
    run_dir = Path(run_dir)
    unknown = set(payload) - {"tensors", "state", "metrics_lines"}
    if unknown:
        raise TypeError(f"checkpoint payload has unknown keys {sorted(unknown)}")
    metrics_lines = payload.get("metrics_lines", 0)
    if not isinstance(metrics_lines, int) or isinstance(metrics_lines, bool) or metrics_lines < 0:
        raise TypeError(f"checkpoint payload 'metrics_lines' must be a non-negative int, got {metrics_lines!r}")
    state = payload.get("state", {})
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint payload 'state' must be a dict, got {type(state).__name__}")
    # Serialise and check everything before touching the disk: a payload that cannot be written changes nothing.
    state_bytes = json.dumps(state).encode("utf-8")
    tensors = _check_tensors(payload.get("tensors", {}))
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} does not exist; cannot write a checkpoint there")
    for stale in run_dir.glob(TEMPORARY_PREFIX + "*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)

    current, old = run_dir / CHECKPOINT, run_dir / CHECKPOINT_OLD
    temporary = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=run_dir))
    moved_current = False
    try:
        tensor_size, tensor_sha256 = write_safetensors(temporary / TENSORS_FILE, tensors, {"format": FORMAT})
        _write_file(temporary / STATE_FILE, state_bytes)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "metrics_lines": metrics_lines,
            "files": {
                TENSORS_FILE: {"bytes": tensor_size, "sha256": tensor_sha256},
                STATE_FILE: {"bytes": len(state_bytes), "sha256": _sha256(state_bytes)},
            },
        }
        _write_file(temporary / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        _fsync_dir(temporary)
        if current.exists():
            if old.exists():  # a crash after the swap left both: `checkpoint` is the newer, complete one
                shutil.rmtree(old)
            _rename(current, old)
            moved_current = True
            _fsync_dir(run_dir)
        # else: no checkpoint yet, or a crash between the renames left only `checkpoint.old`; keep it until
        # the new one is in place.
        _rename(temporary, current)
        _fsync_dir(run_dir)
    except BaseException:
        if moved_current and not current.exists() and old.exists():
            _rename(old, current)  # put the last good checkpoint back where it was
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(run_dir)
    return current


# --------------------------------------------------------------------------------------------------
# Loading


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint that :func:`load_checkpoint` would try (complete or not)."""
    run_dir = Path(run_dir)
    return any((run_dir / name / MANIFEST_FILE).is_file() for name in (CHECKPOINT, CHECKPOINT_OLD))


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The folder :func:`load_checkpoint` reads: ``checkpoint``, or ``checkpoint.old`` if a save was cut short."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UsageError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir} is a file, not a folder")
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        if (run_dir / name / MANIFEST_FILE).is_file():
            return run_dir / name
    raise UsageError(f"run folder {run_dir} has no checkpoint ({run_dir / CHECKPOINT / MANIFEST_FILE} is missing)")


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    try:
        if limit is not None and path.stat().st_size > limit:
            raise UsageError(f"checkpoint file {path} is too large to be a manifest")
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"checkpoint file {path} is missing; the checkpoint is incomplete") from None
    except IsADirectoryError:
        raise UsageError(f"checkpoint file {path} is a folder, not a file") from None
    except OSError as error:
        raise UsageError(f"checkpoint file {path} cannot be read: {error.strerror}") from None


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(_read_bytes(path, _MANIFEST_LIMIT).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"checkpoint file {path} is not valid JSON (truncated or tampered)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UsageError(f"checkpoint file {path} is not an evolm checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise UsageError(
            f"checkpoint file {path} has format version {manifest.get('version')!r}; this evolm reads {VERSION}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(_DATA_FILES):
        raise UsageError(f"checkpoint file {path} must list exactly {', '.join(_DATA_FILES)}; refusing it")
    for name in _DATA_FILES:
        entry = files[name]
        if not (
            isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
        ):
            raise UsageError(f"checkpoint file {path} has a malformed entry for {name}")
    lines = manifest.get("metrics_lines")
    if not isinstance(lines, int) or isinstance(lines, bool) or lines < 0:
        raise UsageError(f"checkpoint file {path} has an invalid metrics_lines value {lines!r}")
    return manifest


def _verified_bytes(folder: Path, name: str, entry: dict) -> bytes:
    path = folder / name
    data = _read_bytes(path)
    if len(data) != entry["bytes"]:
        raise UsageError(
            f"checkpoint file {path} has {len(data)} bytes but its manifest records {entry['bytes']} (truncated or tampered); refusing it"
        )
    if _sha256(data) != entry["sha256"]:
        raise UsageError(
            f"checkpoint file {path} does not match the SHA-256 in its manifest (tampered or corrupt); refusing it"
        )
    return data


def load_checkpoint(run_dir: str | Path) -> dict:
    """Read and verify the run's checkpoint: ``{"tensors": {name: tensor}, "state": dict, "metrics_lines": int}``.

    Falls back to ``checkpoint.old`` only when ``checkpoint`` is missing or has no manifest (a save
    interrupted between its two renames). A checkpoint that is present but truncated or altered is
    refused, never silently replaced by an older one.
    """
    folder = checkpoint_dir(run_dir)
    manifest = _read_manifest(folder)
    # Hash and parse the very same bytes: what is parsed is what was verified.
    tensor_bytes = _verified_bytes(folder, TENSORS_FILE, manifest["files"][TENSORS_FILE])
    state_bytes = _verified_bytes(folder, STATE_FILE, manifest["files"][STATE_FILE])
    try:
        tensors = load_safetensors_bytes(tensor_bytes)
    except (SafetensorError, ValueError, RuntimeError) as error:
        message = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise UsageError(
            f"checkpoint file {folder / TENSORS_FILE} is not a valid safetensors file: {message}"
        ) from None
    try:
        state = json.loads(state_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"checkpoint file {folder / STATE_FILE} is not valid JSON") from None
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint file {folder / STATE_FILE} must hold a JSON object")
    return {"tensors": tensors, "state": state, "metrics_lines": manifest["metrics_lines"]}


# --------------------------------------------------------------------------------------------------
# Metrics


def truncate_metrics(path: str | Path, lines: int) -> int:
    """Cut ``metrics.jsonl`` back to its first ``lines`` lines (those a checkpoint covers); returns lines dropped.

    Lines written after the checkpoint (and a half-written last line) go, so a resumed run appends
    exactly where the checkpoint left off.
    """
    path = Path(path)
    if not path.exists():
        if lines == 0:
            path.touch()
            return 0
        raise UsageError(f"metrics file {path} is missing but the checkpoint covers {lines} lines of it")
    offset = 0
    kept = 0
    try:
        with open(path, "r+b") as handle:
            while kept < lines:
                line = handle.readline()
                if not line.endswith(b"\n"):
                    break
                offset += len(line)
                kept += 1
            if kept < lines:
                raise UsageError(f"metrics file {path} has {kept} complete lines but the checkpoint covers {lines}")
            rest = handle.read()
            dropped = rest.count(b"\n") + (0 if rest.endswith(b"\n") or not rest else 1)
            handle.truncate(offset)
            handle.flush()
            os.fsync(handle.fileno())
    except IsADirectoryError:
        raise UsageError(f"metrics file {path} is a folder, not a file") from None
    except PermissionError as error:
        raise UsageError(f"metrics file {path} cannot be rewritten: {error.strerror}") from None
    return dropped


# --------------------------------------------------------------------------------------------------
# Tensors inside nested state (optimiser state dicts and the like) <-> safetensors + JSON

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__")


def pack_tree(obj: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure into tensors (for safetensors) and a JSON-able skeleton that names them.

    Tensors and numpy arrays become ``{"__tensor__": name}`` / ``{"__ndarray__": name}`` with names
    ``prefix.path.to.value``; tuples and dicts with non-string keys are tagged so they come back as such.
    """
    tensors: dict[str, torch.Tensor] = {}

    def store(value: torch.Tensor, path: list[str]) -> str:
        name = ".".join([prefix, *path])
        if name in tensors:
            raise ValueError(f"two values map to the tensor name {name!r}")
        tensors[name] = value
        return name

    def encode(value: Any, path: list[str]) -> Any:
        if isinstance(value, torch.Tensor):
            return {"__tensor__": store(value.detach().cpu(), path)}
        if isinstance(value, np.ndarray):
            return {"__ndarray__": store(torch.from_numpy(np.ascontiguousarray(value).copy()), path)}
        if isinstance(value, np.generic):
            return value.item()
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v, [*path, str(i)]) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, [*path, str(i)]) for i, v in enumerate(value)]
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value) and not any(k in _TAGS for k in value):
                return {k: encode(v, [*path, k]) for k, v in value.items()}
            return {"__dict__": [[encode(k, [*path, "key"]), encode(v, [*path, str(k)])] for k, v in value.items()]}
        raise TypeError(f"cannot checkpoint a {type(value).__name__} at {'.'.join([prefix, *path])}")

    return tensors, encode(obj, [])


def unpack_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_tree`; a name the tensors lack is a UsageError (an inconsistent checkpoint)."""

    def tensor(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise UsageError(f"checkpoint state names tensor {name!r}, which {TENSORS_FILE} does not hold")
        return tensors[name]

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, inner),) = value.items()
                if key == "__tensor__":
                    return tensor(inner)
                if key == "__ndarray__":
                    return tensor(inner).numpy().copy()
                if key == "__tuple__":
                    return tuple(decode(v) for v in inner)
                if key == "__dict__":
                    try:
                        return {_hashable(decode(k)): decode(v) for k, v in inner}
                    except (TypeError, ValueError):
                        raise UsageError("checkpoint state has a malformed tagged dict") from None
            return {k: decode(v) for k, v in value.items()}
        return value

    return decode(skeleton)


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        raise TypeError("unhashable key")
    return key


def flatten_optimizer_state(state_dict: dict, prefix: str = "optimizer") -> tuple[dict[str, torch.Tensor], Any]:
    """A torch optimiser ``state_dict()`` as (tensors for safetensors, JSON skeleton): Adam moments stay tensors."""
    return pack_tree(state_dict, prefix)


def unflatten_optimizer_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> dict:
    """The ``state_dict`` for ``optimizer.load_state_dict`` from :func:`flatten_optimizer_state`'s output."""
    state = unpack_tree(skeleton, tensors)
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        raise UsageError("checkpoint optimizer state is malformed (no state / param_groups)")
    return state


def individual_to_tree(individual) -> dict:
    """A DEAP individual (list genes or a numpy vector) with its fitness and attributes, for :func:`pack_tree`.

    ``pack_tree`` alone would keep a list individual's genes but drop its class, fitness and any
    attribute a strategy set on it (``parent_fitness``, say).
    """
    objectives = len(individual.fitness.weights)
    vector = isinstance(individual, np.ndarray)
    genes = np.asarray(individual).view(np.ndarray).copy() if vector else list(individual)
    fitness = list(individual.fitness.values) if individual.fitness.valid else None
    attributes = {k: v for k, v in vars(individual).items() if k != "fitness"}
    return {
        "kind": "vector" if vector else "list",
        "objectives": objectives,
        "genes": genes,
        "fitness": fitness,
        "attributes": attributes,
    }


def individual_from_tree(tree: dict):
    """Inverse of :func:`individual_to_tree` (after :func:`unpack_tree`): the same class, genes and fitness."""
    from evolm.individuals import (
        MAX_OBJECTIVES,
        make_individual,
        make_vector_individual,
    )

    try:
        objectives, kind, genes, fitness = tree["objectives"], tree["kind"], tree["genes"], tree["fitness"]
    except (TypeError, KeyError):
        raise UsageError("checkpoint state holds a malformed individual") from None
    if not isinstance(objectives, int) or not 1 <= objectives <= MAX_OBJECTIVES or kind not in ("list", "vector"):
        raise UsageError("checkpoint state holds a malformed individual")
    individual = (
        make_vector_individual(genes, objectives) if kind == "vector" else make_individual(list(genes), objectives)
    )
    if fitness is not None:
        individual.fitness.values = tuple(float(v) for v in fitness)
    attributes = tree.get("attributes") or {}
    if not isinstance(attributes, dict) or "fitness" in attributes:
        raise UsageError("checkpoint state holds a malformed individual")
    for name, value in attributes.items():
        setattr(individual, name, value)
    return individual


# --------------------------------------------------------------------------------------------------
# RNG states as JSON


def torch_rng_to_json(generator: torch.Generator | torch.Tensor) -> dict:
    """A torch generator's state (or a ``torch.get_rng_state()`` tensor) as JSON."""
    state = generator.get_state() if isinstance(generator, torch.Generator) else generator
    data = state.detach().cpu().contiguous().to(torch.uint8).numpy().tobytes()
    device = str(generator.device) if isinstance(generator, torch.Generator) else "cpu"
    return {"type": "torch", "device": device, "state": base64.b64encode(data).decode("ascii")}


def torch_rng_state_tensor(data: dict) -> torch.Tensor:
    """The ByteTensor state in :func:`torch_rng_to_json`'s output (for ``torch.set_rng_state``)."""
    if not isinstance(data, dict) or data.get("type") != "torch" or not isinstance(data.get("state"), str):
        raise UsageError("checkpoint state holds a malformed torch RNG state")
    try:
        raw = base64.b64decode(data["state"], validate=True)
    except ValueError:
        raise UsageError("checkpoint state holds a torch RNG state that is not valid base64") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def torch_rng_from_json(data: dict, generator: torch.Generator | None = None) -> torch.Generator:
    """Restore into ``generator`` (a new CPU generator if None) and return it."""
    state = torch_rng_state_tensor(data)
    generator = generator if generator is not None else torch.Generator(device=data.get("device", "cpu"))
    try:
        generator.set_state(state)
    except (RuntimeError, ValueError) as error:
        raise UsageError(
            f"checkpoint state holds a torch RNG state this generator refuses: {str(error).splitlines()[0]}"
        ) from None
    return generator


_BIT_GENERATORS = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def _numpy_encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _numpy_encode(v) for k, v in value.items()}
    return value


def _numpy_decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            dtype = np.dtype(str(value.get("dtype")))
            if dtype.kind not in "ui":
                raise UsageError(f"checkpoint state holds a numpy RNG array of dtype {dtype}, not an integer type")
            return np.array(value["__ndarray__"], dtype=dtype)
        return {k: _numpy_decode(v) for k, v in value.items()}
    return value


def numpy_rng_to_json(rng: np.random.Generator | np.random.BitGenerator | np.random.RandomState) -> dict:
    """A numpy ``Generator``, bit generator or legacy ``RandomState`` state as JSON; 128-bit integers stay exact."""
    if isinstance(rng, np.random.RandomState):
        return {"type": "numpy", "legacy": True, "state": _numpy_encode(rng.get_state(legacy=False))}
    bit_generator = rng.bit_generator if isinstance(rng, np.random.Generator) else rng
    return {"type": "numpy", "state": _numpy_encode(bit_generator.state)}


def numpy_rng_from_json(data: dict, rng=None):
    """Restore into ``rng`` and return it. ``rng`` None makes a new Generator of the recorded bit generator
    (a new ``RandomState`` for a legacy state); pass ``numpy.random.mtrand._rand`` for numpy's global one."""
    if not isinstance(data, dict) or data.get("type") != "numpy" or not isinstance(data.get("state"), dict):
        raise UsageError("checkpoint state holds a malformed numpy RNG state")
    state = _numpy_decode(data["state"])
    name = state.get("bit_generator")
    if rng is None:
        if name not in _BIT_GENERATORS:
            raise UsageError(f"checkpoint state holds a numpy RNG state of unknown bit generator {name!r}")
        rng = (
            np.random.RandomState(_BIT_GENERATORS[name]())
            if data.get("legacy")
            else np.random.Generator(_BIT_GENERATORS[name]())
        )
    try:
        if isinstance(rng, np.random.RandomState):
            rng.set_state(state)
        else:
            rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as error:
        raise UsageError(f"checkpoint state holds a numpy RNG state this generator refuses: {error}") from None
    return rng


def python_rng_to_json(rng: random.Random | None = None) -> dict:
    """A ``random.Random`` state as JSON; ``None`` means the global ``random`` module (DEAP's)."""
    version, internal, gauss_next = (rng or random).getstate()
    return {"type": "python", "version": version, "internal": list(internal), "gauss_next": gauss_next}


def python_rng_from_json(data: dict, rng: random.Random | None = None) -> random.Random | Any:
    """Restore into ``rng`` (a new ``random.Random`` if None; pass the ``random`` module for the global one)."""
    if not isinstance(data, dict) or data.get("type") != "python" or not isinstance(data.get("internal"), list):
        raise UsageError("checkpoint state holds a malformed python RNG state")
    gauss_next = data.get("gauss_next")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in data["internal"]) or not (
        gauss_next is None or isinstance(gauss_next, float)
    ):
        raise UsageError("checkpoint state holds a malformed python RNG state")
    rng = rng if rng is not None else random.Random()
    try:
        rng.setstate((data.get("version"), tuple(data["internal"]), gauss_next))
    except (TypeError, ValueError, OverflowError) as error:
        raise UsageError(f"checkpoint state holds a python RNG state that random refuses: {error}") from None
    return rng
