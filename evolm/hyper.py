"""The hyperparameter genome of population-based training (Jaderberg et al. 2017, "Population Based
Training of Neural Networks", arXiv:1711.09846): named, bounded training hyperparameters (log-scale
learning rate, weight decay, dropout, batch size), each held by a gene in [0, 1].

Unlike the weight genomes of :mod:`evolm.genome`, these genes never touch a weight: ``apply`` only
sets dropout in place; the rest are read by the training loop that ``decode`` feeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class HyperParameter:
    """A bounded hyperparameter; genes hold it as a number in [0, 1]."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def decode(self, gene: float):
        unit = min(max(float(gene), 0.0), 1.0)
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return round(value) if self.integer else value

    def encode(self, value) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)


DEFAULT_HYPERPARAMETERS = (
    HyperParameter("learning_rate", 1e-4, 3e-2, log=True),
    HyperParameter("weight_decay", 0.0, 0.1),
    HyperParameter("dropout", 0.0, 0.3),
    HyperParameter("batch_size", 8, 64, integer=True),
)


class HyperGenome:
    """Training hyperparameters for population-based training; ``apply`` sets dropout in place."""

    name = "hyper"

    def __init__(self, parameters: Sequence[HyperParameter] = DEFAULT_HYPERPARAMETERS):
        self.parameters = tuple(parameters)
        self.size = len(self.parameters)

    def decode(self, genes) -> dict:
        return {p.name: p.decode(g) for p, g in zip(self.parameters, genes)}

    def encode(self, values: dict) -> list[float]:
        return [p.encode(values[p.name]) for p in self.parameters]

    def apply(self, model: nn.Module, genes) -> None:
        values = self.decode(genes)
        self._saved = {m: m.p for m in model.modules() if isinstance(m, nn.Dropout)}
        if "dropout" in values:
            for module in self._saved:
                module.p = values["dropout"]

    def undo(self, model: nn.Module, genes) -> None:
        for module, p in getattr(self, "_saved", {}).items():
            module.p = p
