"""evolm: evolutionary optimisation engine for language models.

``evolm.evolve(model, ...)`` evolves any PyTorch module (see :mod:`evolm.api`); the command line is ``evolm``.
"""

__version__ = "0.1.0"

_API = ("evolve", "resume", "load_weights", "time_major", "time_major_io", "logits_from")
__all__ = ["__version__", *_API]


def __getattr__(name):
    # The API pulls in torch and the engine: imported on first use, not by ``import evolm``.
    if name in _API:
        from evolm import api

        return getattr(api, name)
    raise AttributeError(f"module 'evolm' has no attribute {name!r}")
