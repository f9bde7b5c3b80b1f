"""The atomic checkpoint store: ``RUN_DIR/checkpoint/`` written by fsync and rename, read back verified.

See :mod:`evolm.checkpoint` for the folder's three files and why a crash at any instant leaves a
complete checkpoint. Tensors go through :func:`~evolm.checkpoint.safetensors_writer.write_safetensors`
on the way out and through safetensors (never pickle or ``torch.load``) on the way back.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from evolm.checkpoint.safetensors_writer import check_tensors, write_safetensors
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


# --------------------------------------------------------------------------------------------------
# Writing


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
    tensors = check_tensors(payload.get("tensors", {}))
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
