"""Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural Networks",
arXiv:1711.09846).

Each member trains its own copy of the evolving weights with Adam under its own ``hyper`` genome
(learning rate on a log scale, weight decay, dropout, batch size). Every generation is one ready
interval of ``strategy.pbt_steps`` steps; then the members are scored on the generation's shared
fitness batch, the bottom ``pbt_quantile`` copy the weights, optimiser state and hyperparameters of
a random member of the top quantile (exploit), and perturb the copied hyperparameters (explore):
with probability ``pbt_resample`` a fresh draw, else DEAP's bounded polynomial mutation on the
[0, 1]-encoded genome. Ray Tune's PBT defaults: quantile 0.25, resample 0.25.

Members train in-process on the driver's worker, one after another, using its model as scratch
space; the best member's weights become the worker's base after every generation, so validation,
reports and the saved model follow the best member.

Memory: each member holds its own copy of the evolving weights and Adam's two moments, members x 3 x
the weight bytes (the default 8 members: 24x the weights, 13 MB for the default 137k model, about
4.9 GB for a 51M one), which is why pbt defaults to 8 members (Jaderberg et al. and Ray Tune's
examples use 4-20), not the 48 individuals of es.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from deap import tools

from evolm.errors import UsageError
from evolm.genome import HyperGenome
from evolm.individuals import make_individual
from evolm.seeding import derive_seed, numpy_generator, scoped_python_random, scoped_torch_seed, torch_generator
from evolm.strategies.base import Strategy, check_population_at_least, check_positive, check_probability
from evolm.strategies.shaping import best_first


class PopulationBasedTraining(Strategy):
    name = "pbt"
    # Each member holds its own copy of the evolving weights and Adam's two moments: members x 3 x the
    # weight bytes. Jaderberg et al. 2017 and Ray Tune's examples use 4-20 members.
    defaults = {"strategy.population_size": 8}

    def __init__(self, config):
        super().__init__(config)
        self.genome = HyperGenome()
        self.members: list[dict] = []

    @staticmethod
    def validate(config) -> None:
        settings = config.strategy
        if config.evaluator.workers or config.evaluator.ray_address:
            raise UsageError(
                "config field strategy.name: pbt trains its members in-process; drop --workers/--ray-address"
            )
        check_population_at_least(config, 2, "pbt")
        check_positive(config, "pbt_steps")
        if not 0.0 < settings.pbt_quantile <= 0.5:
            raise UsageError(f"config field strategy.pbt_quantile must be in (0, 0.5], got {settings.pbt_quantile}")
        check_probability(config, "pbt_resample")

    def bind(self, worker) -> None:
        self.worker = worker
        if self.members:
            return
        rng = numpy_generator(self.run_seed, "pbt", "init")
        for _ in range(self.population_size):
            self.members.append(
                {"genes": self._random_genes(rng), "tensors": _copy_weights(worker.space), "optimizer": None}
            )

    def _random_genes(self, rng: np.random.Generator) -> list[float]:
        """Hyperparameters drawn uniformly on the genome's [0, 1] encoding (log scale for the learning rate)."""
        return [float(g) for g in rng.random(self.genome.size)]

    def _train(self, member: dict, index: int, generation: int) -> int:
        """One ready interval of Adam steps on ``member``; returns the forward tokens it used."""
        worker, config = self.worker, self.config
        values = self.genome.decode(member["genes"])
        _load_weights(worker.space, member["tensors"])
        parameters = worker.space.parameters
        optimizer = torch.optim.Adam(parameters, lr=values["learning_rate"], weight_decay=values["weight_decay"])
        if member["optimizer"] is not None:
            # A deep copy: load_state_dict may keep the stored tensors, and Adam updates them in place.
            optimizer.load_state_dict(copy.deepcopy(member["optimizer"]))
            for group in optimizer.param_groups:  # the member's (possibly explored) hyperparameters win
                group["lr"], group["weight_decay"] = values["learning_rate"], values["weight_decay"]
        generator = torch_generator(self.run_seed, "pbt-batches", index, generation)
        batch_size = values["batch_size"]
        self.genome.apply(worker.model, member["genes"])  # dropout
        worker.model.train()
        with torch.enable_grad(), scoped_torch_seed(derive_seed(self.run_seed, "pbt-dropout", index, generation)):
            for p in parameters:
                p.requires_grad_(True)
            for _ in range(config.strategy.pbt_steps):
                batch = worker.corpus.sample_batch(batch_size, generator).to(worker.device)
                logits = worker.model(batch.inputs)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        worker.model.eval()
        self.genome.undo(worker.model, member["genes"])
        for p in parameters:
            p.grad = None
        member["tensors"] = _copy_weights(worker.space)
        member["optimizer"] = copy.deepcopy(optimizer.state_dict())
        return config.strategy.pbt_steps * batch_size * config.model.context

    def ask(self, generation: int) -> list:
        """Train every member for one ready interval, then score it on the generation's shared fitness batch."""
        worker = self.worker
        context = worker.fitness_context(generation)
        population, self.train_tokens = [], 0
        for index, member in enumerate(self.members):
            self.train_tokens += self._train(member, index, generation)
            individual = make_individual(list(member["genes"]))
            individual.member = index
            with torch.no_grad():
                individual.fitness.values = worker.fitness(worker.model, context)
            worker.forward_tokens += worker.fitness.tokens(context)
            population.append(individual)
        return population

    def _tell(self, population, values: np.ndarray, generation: int):
        settings = self.config.strategy
        # Truncation selection: the bottom quantile exploits the top quantile.
        order = best_first(values)
        count = max(1, int(round(len(order) * settings.pbt_quantile)))
        top, bottom = order[:count], order[-count:]
        rng = numpy_generator(self.run_seed, "pbt", "exploit", generation)
        exploited = []
        # DEAP's mutation draws from ``random``: scoped and seeded per generation.
        with scoped_python_random(self.run_seed, "pbt", "explore", generation):
            for loser in bottom:
                winner = int(top[rng.integers(len(top))])
                source, target = self.members[winner], self.members[int(loser)]
                target["tensors"] = [t.clone() for t in source["tensors"]]
                target["optimizer"] = copy.deepcopy(source["optimizer"])
                # Explore: a fresh draw, or a bounded perturbation of the winner's hyperparameters.
                genes = list(source["genes"])
                if rng.random() < settings.pbt_resample:
                    genes = self._random_genes(rng)
                else:
                    tools.mutPolynomialBounded(genes, eta=20.0, low=0.0, up=1.0, indpb=1.0)
                target["genes"] = [float(g) for g in genes]
                exploited.append((int(loser), winner))
        best = self.members[int(order[0])]
        # The best member becomes the worker's base: validation, reports and the saved model follow it.
        _load_weights(self.worker.space, best["tensors"])
        self.worker.space.commit()
        metrics = {f"best_{k}": v for k, v in self.genome.decode(best["genes"]).items()}
        metrics["exploited"] = exploited
        metrics["extra_forward_tokens"] = self.train_tokens
        metrics["extra_evaluations"] = len(population)
        return metrics, None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "members": self.members}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.members = state["members"]


def _copy_weights(space) -> list[torch.Tensor]:
    """A member's own copy of the evolving tensors."""
    return [t.detach().clone() for t in space.tensors]


def _load_weights(space, tensors) -> None:
    """Write a member's tensors into the worker's evolving tensors, in place."""
    for tensor, value in zip(space.tensors, tensors):
        tensor.copy_(value)
