"""Where fitness is computed: in-process (``local``) or on Ray actors (``ray``), behind one interface."""

from evolm.evaluators.local import LocalEvaluator

__all__ = ["LocalEvaluator"]
