"""evolm: evolutionary optimisation engine for language models."""

__version__ = "0.1.0"
