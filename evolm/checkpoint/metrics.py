"""Cutting ``metrics.jsonl`` back to the lines a checkpoint covers, so a resumed run appends where it left off."""

from __future__ import annotations

import os
from pathlib import Path

from evolm.errors import UsageError


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
