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

The package, one concept a module: :mod:`~evolm.checkpoint.store` (the folder: save, load, manifest),
:mod:`~evolm.checkpoint.safetensors_writer` (the streamed tensor file), :mod:`~evolm.checkpoint.metrics`
(cutting ``metrics.jsonl`` back on resume), :mod:`~evolm.checkpoint.tree` (nested state and DEAP
individuals as tensors plus JSON) and :mod:`~evolm.checkpoint.rng` (RNG states as JSON).
"""

from evolm.checkpoint.metrics import truncate_metrics
from evolm.checkpoint.rng import (
    numpy_rng_from_json,
    numpy_rng_to_json,
    python_rng_from_json,
    python_rng_to_json,
    torch_rng_from_json,
    torch_rng_state_tensor,
    torch_rng_to_json,
)
from evolm.checkpoint.safetensors_writer import SAFETENSORS_DTYPES, write_safetensors
from evolm.checkpoint.store import (
    CHECKPOINT,
    CHECKPOINT_OLD,
    FORMAT,
    MANIFEST_FILE,
    STATE_FILE,
    TEMPORARY_PREFIX,
    TENSORS_FILE,
    VERSION,
    checkpoint_dir,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from evolm.checkpoint.tree import (
    flatten_optimizer_state,
    individual_from_tree,
    individual_to_tree,
    pack_tree,
    unflatten_optimizer_state,
    unpack_tree,
)

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_OLD",
    "FORMAT",
    "MANIFEST_FILE",
    "SAFETENSORS_DTYPES",
    "STATE_FILE",
    "TEMPORARY_PREFIX",
    "TENSORS_FILE",
    "VERSION",
    "checkpoint_dir",
    "flatten_optimizer_state",
    "has_checkpoint",
    "individual_from_tree",
    "individual_to_tree",
    "load_checkpoint",
    "numpy_rng_from_json",
    "numpy_rng_to_json",
    "pack_tree",
    "python_rng_from_json",
    "python_rng_to_json",
    "save_checkpoint",
    "torch_rng_from_json",
    "torch_rng_state_tensor",
    "torch_rng_to_json",
    "truncate_metrics",
    "unflatten_optimizer_state",
    "unpack_tree",
    "write_safetensors",
]
