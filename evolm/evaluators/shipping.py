"""What a run ships to Ray actors must pickle: checked on the driver, before any Ray runtime starts.

Ray sends the worker factory (a user's model factory, adapter, fitness, tokenizer, validation) to
every actor with its cloudpickle; a lambda over a lock or an open file fails there, deep in an
actor's start. :func:`check_picklable` tries each part here first and names the one that fails.
"""

from __future__ import annotations

from evolm.errors import UsageError


def check_picklable(parts: dict, where: str) -> None:
    """Every part must pickle with Ray's cloudpickle (what ships it to actors); else one clear UsageError."""
    from ray import cloudpickle as pickler  # imported on use: `import evolm` does not pay for Ray

    for name, value in parts.items():
        if value is None:
            continue
        try:
            pickler.dumps(value)
        except Exception as error:
            label = getattr(value, "__qualname__", None) or type(value).__name__
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise UsageError(
                f"{name} {label!r} cannot be sent to Ray actors ({where}): {first}. It must be importable (defined "
                f"at module level in an importable module) or picklable: move unpicklable state (locks, open files, "
                f"generators, sockets) out of it, or run in-process (evaluator.workers=0)"
            ) from None
