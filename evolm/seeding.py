"""Explicit, derived seeds: every random draw in evolm comes from a generator seeded here.

No library code touches the global ``random``, ``numpy.random`` or ``torch`` RNG state.
"""

from __future__ import annotations

import contextlib
import hashlib
import random

import numpy as np
import torch

_MASK63 = (1 << 63) - 1


def derive_seed(*parts) -> int:
    """A 63-bit seed that depends on every part (ints or strings), stable across processes and platforms."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def mix_seed(seed: int, index: int) -> int:
    """Fast splitmix64-style mix of an individual's seed with a tensor index (hot path: no hashing library)."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


def torch_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def numpy_generator(*parts) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


@contextlib.contextmanager
def scoped_python_random(*parts):
    """Run DEAP operators (which draw from the global ``random``) under a seeded state, then restore it."""
    saved = random.getstate()
    random.seed(derive_seed(*parts))
    try:
        yield
    finally:
        random.setstate(saved)


@contextlib.contextmanager
def scoped_numpy_random(*parts):
    """DEAP's CMA-ES draws from the global ``numpy.random``: seed it only inside this scope."""
    saved = np.random.get_state()
    np.random.seed(derive_seed(*parts) % (2**32))
    try:
        yield
    finally:
        np.random.set_state(saved)


@contextlib.contextmanager
def scoped_torch_seed(seed: int):
    """Run code that can only draw from torch's global RNG (default module initialisation, dropout) under
    ``seed``, then give the caller back every state it had.

    Not ``torch.random.fork_rng(devices=[]) + torch.manual_seed``: ``manual_seed`` reseeds every CUDA
    device too (or queues the reseed until CUDA starts), and with ``devices=[]`` nothing puts CUDA's
    state back. Here the CPU generator is seeded directly, and CUDA devices are saved, seeded and
    restored only when CUDA is already initialised (a tensor that lives there exists, so dropout on it
    must be seeded too); CUDA is never started by this scope.
    """
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    torch.default_generator.manual_seed(int(seed))  # exactly what torch.manual_seed does on the CPU
    if cuda_states is not None:
        for generator in torch.cuda.default_generators:
            generator.manual_seed(int(seed))
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
