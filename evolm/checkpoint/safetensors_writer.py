"""Streaming safetensors writer: a tensor file written one tensor at a time, with no copy of the weights.

Used for a checkpoint's ``tensors.safetensors`` (:mod:`evolm.checkpoint.store`) and a run's final
``model.safetensors`` (:mod:`evolm.rundir`). Reading goes through safetensors itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import torch

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


def check_tensors(tensors: dict) -> dict[str, torch.Tensor]:
    """``tensors`` if it is a dict of named tensors of a dtype safetensors can hold; else a TypeError."""
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
    return tensor.view(torch.uint8).numpy().data  # the array's own buffer: no copy


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
    tensors = check_tensors(tensors)
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
