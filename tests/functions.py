"""Standard test functions as real evolm workers: a module holding a point, and a fitness with the worker interface."""

import math

import torch
from torch import nn

from evolm.engine import step_generation
from evolm.evaluators import LocalEvaluator
from evolm.genome import ParamSpace, make_genome
from evolm.strategies import make_strategy
from evolm.strategies.optimizers import make_center_optimizer
from evolm.worker import Worker


class Point(nn.Module):
    def __init__(self, dimension):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(dimension))


class FunctionFitness:
    """Maximise ``-f(x - target)``: the optimum, 0, sits at ``target``."""

    objectives = 1

    def __init__(self, function, target):
        self.function = function
        self.target = target

    def context(self, generation):
        return None

    def tokens(self, context):
        return 0

    def __call__(self, model, context):
        return (-float(self.function(model.x.detach() - self.target)),)

    def report(self, model, generation):
        return {}


def sphere(z):
    return (z**2).sum()


def rastrigin(z):
    return 10 * z.numel() + (z**2 - 10 * torch.cos(2 * math.pi * z)).sum()


def function_worker(config, function, target):
    model = Point(len(target))
    space = ParamSpace(model)
    return Worker(
        model,
        space,
        make_genome(config, space),
        FunctionFitness(function, target),
        lambda params: make_center_optimizer(params, config),
    )


def minimise(config, function, target):
    """Run the configured strategy on ``function``; returns f at the reported best (0 is the optimum)."""
    worker = function_worker(config, function, target)
    evaluator = LocalEvaluator(worker)
    strategy = make_strategy(config, worker)
    for generation in range(config.generations):
        step_generation(strategy, evaluator, generation)
    with worker.applied(strategy.best_genes()) as model:
        return float(function(model.x.detach() - target))
