"""Nested state (optimiser state dicts, DEAP individuals and the like) as tensors for safetensors plus JSON.

A checkpoint holds no pickle: :func:`pack_tree` splits a structure into named tensors (for
``tensors.safetensors``) and a JSON skeleton that names them (for ``state.json``), and
:func:`unpack_tree` puts it back together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evolm.checkpoint.store import TENSORS_FILE
from evolm.errors import UsageError
from evolm.individuals import MAX_OBJECTIVES, make_individual, make_vector_individual

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
