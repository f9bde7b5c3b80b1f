"""Language models evolm evolves: a small causal Transformer (``gpt``) and the seed document's LSTM (``lstm``)."""

from evolm.models.base import LanguageModel, count_parameters
from evolm.models.build import BUILT_IN, build_initial_model, build_model, resolve_device
from evolm.models.gpt import GPT, GPTConfig
from evolm.models.lstm import LSTMConfig, LSTMLanguageModel

MODEL_NAMES = tuple(BUILT_IN)

__all__ = [
    "GPT",
    "GPTConfig",
    "LSTMConfig",
    "LSTMLanguageModel",
    "LanguageModel",
    "MODEL_NAMES",
    "build_initial_model",
    "build_model",
    "count_parameters",
    "resolve_device",
]
