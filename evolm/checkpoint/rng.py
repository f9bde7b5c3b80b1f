"""RNG states (torch, numpy, Python's ``random``) as plain JSON, for a checkpoint's ``state.json``.

No checkpoint saves a process-wide RNG today (see :mod:`evolm.checkpoint`); these codecs restore
a generator exactly for a caller that keeps its own.
"""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import torch

from evolm.errors import UsageError


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
