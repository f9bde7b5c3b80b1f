"""Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural Networks",
arXiv:1711.09846).

Each member trains its own copy of the evolving weights with Adam under its own ``hyper`` genome
(learning rate on a log scale, weight decay, dropout, batch size). Every generation is one ready
interval of ``strategy.pbt_steps`` steps; then the members are scored on the generation's shared
fitness batch, the bottom ``pbt_quantile`` copy the weights, optimiser state and hyperparameters of
a random member of the top quantile (exploit), and perturb the copied hyperparameters (explore):
with probability ``pbt_resample`` a fresh draw, else DEAP's bounded polynomial mutation on the
[0, 1]-encoded genome. Ray Tune's PBT defaults: quantile 0.25, resample 0.25.

Where members live. In-process, they train on the driver's worker, one after another, using its
model as scratch space. With ``evaluator.backend = ray`` and workers (or a cluster address,
:func:`members_on_ray`), each member lives in a Ray actor and trains there
(:mod:`evolm.evaluators.pbt_ray`): ``ask`` hands the evaluator unscored individuals that carry
``member`` (the index) and ``member_start`` (the state to train from: a dict of ``tensors`` and
``optimizer``, or the handle the evaluator gave back last generation), and the evaluator sets
``member_trained`` (a handle whose ``weights()`` and ``state()`` fetch the trained state) on each.
The driver only decides exploit and explore, with the same seeded draws, so both give the same
metrics: exploit hands the winner's handle to the loser, whose actor loads the state from Ray's
object store. Either way the best member's weights become the driver worker's base after every
generation, so validation, reports and the saved model follow the best member; a checkpoint holds
every member in the same form, so a run checkpointed in-process resumes on Ray and back.

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


def members_on_ray(config) -> bool:
    """Whether pbt's members live in Ray actors: ``evaluator.backend = ray`` with workers or a cluster
    address (the condition under which :func:`evolm.evaluators.make_evaluator` picks Ray)."""
    settings = config.evaluator
    return (
        config.strategy.name == "pbt" and settings.backend == "ray" and bool(settings.workers or settings.ray_address)
    )


class PopulationBasedTraining(Strategy):
    name = "pbt"
    # Each member holds its own copy of the evolving weights and Adam's two moments: members x 3 x the
    # weight bytes. Jaderberg et al. 2017 and Ray Tune's examples use 4-20 members.
    defaults = {"strategy.population_size": 8}

    def __init__(self, config):
        super().__init__(config)
        self.genome = HyperGenome()
        self.on_ray = members_on_ray(config)
        # In-process: {"genes", "tensors", "optimizer"}; on Ray: {"genes", "state"}, the state a dict of
        # tensors and optimizer (the start, or restored) or the evaluator's handle of the trained state.
        self.members: list[dict] = []

    @staticmethod
    def validate(config) -> None:
        settings, evaluator = config.strategy, config.evaluator
        if evaluator.backend == "threads" and evaluator.workers > 1:
            raise UsageError(
                "config field evaluator.backend: pbt trains its members in-process or on Ray actors "
                "(evaluator.backend = ray), not on threads"
            )
        check_population_at_least(config, 2, "pbt")
        if members_on_ray(config) and evaluator.workers > settings.population_size:
            raise UsageError(
                f"config field evaluator.workers: pbt places each of its {settings.population_size} members on one "
                f"Ray actor; {evaluator.workers} actors would leave some idle (use at most strategy.population_size)"
            )
        check_positive(config, "pbt_steps")
        if not 0.0 < settings.pbt_quantile <= 0.5:
            raise UsageError(f"config field strategy.pbt_quantile must be in (0, 0.5], got {settings.pbt_quantile}")
        check_probability(config, "pbt_resample")

    def bind(self, worker) -> None:
        self.worker = worker
        if self.members:
            return
        rng = numpy_generator(self.run_seed, "pbt", "init")
        start = {"tensors": _copy_weights(worker.space), "optimizer": None}  # on Ray: one copy, shipped once
        for _ in range(self.population_size):
            genes = self._random_genes(rng)
            if self.on_ray:
                self.members.append({"genes": genes, "state": start})
            else:
                self.members.append({"genes": genes, "tensors": _copy_weights(worker.space), "optimizer": None})

    def _random_genes(self, rng: np.random.Generator) -> list[float]:
        """Hyperparameters drawn uniformly on the genome's [0, 1] encoding (log scale for the learning rate)."""
        return [float(g) for g in rng.random(self.genome.size)]

    def _interval_tokens(self, genes) -> int:
        """Forward tokens of one ready interval under ``genes`` (its batch size)."""
        return self.config.strategy.pbt_steps * self.genome.decode(genes)["batch_size"] * self.config.model.context

    def ask(self, generation: int) -> list:
        """In-process: train every member for one ready interval, then score it on the generation's shared
        fitness batch. On Ray: the members unscored, for the evaluator to train and score on the actors."""
        population = []
        self.train_tokens = sum(self._interval_tokens(member["genes"]) for member in self.members)
        context = None if self.on_ray else self.worker.fitness_context(generation)
        for index, member in enumerate(self.members):
            individual = make_individual(list(member["genes"]))
            individual.member = index
            if context is None:
                individual.member_start = member["state"]
            else:
                train_member(self.worker, self.genome, member, index, generation, self.run_seed, self.config)
                individual.fitness.values = score_member(self.worker, context)
            population.append(individual)
        return population

    def _tell(self, population, values: np.ndarray, generation: int):
        settings = self.config.strategy
        if self.on_ray:
            for individual in population:
                self.members[individual.member]["state"] = individual.member_trained
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
                if self.on_ray:  # the handle, not the state: the loser's actor loads it from the object store
                    target["state"] = source["state"]
                else:
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
        _load_weights(self.worker.space, _weights_of(best["state"]) if self.on_ray else best["tensors"])
        self.worker.space.commit()
        metrics = {f"best_{k}": v for k, v in self.genome.decode(best["genes"]).items()}
        metrics["exploited"] = exploited
        metrics["extra_forward_tokens"] = self.train_tokens
        # In-process the members were scored in ask (the engine saw none to evaluate); on Ray the evaluator scored them.
        metrics["extra_evaluations"] = 0 if self.on_ray else len(population)
        return metrics, None

    def state_dict(self) -> dict:
        """Every member as genes, tensors and optimizer state, wherever it lives (Ray: fetched here)."""
        members = [{"genes": m["genes"], **_state_of(m)} for m in self.members] if self.on_ray else self.members
        return {**super().state_dict(), "members": members}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        members = state["members"]
        if self.on_ray:
            members = [
                {"genes": m["genes"], "state": {"tensors": m["tensors"], "optimizer": m["optimizer"]}} for m in members
            ]
        self.members = members


def train_member(worker, genome: HyperGenome, member: dict, index: int, generation: int, run_seed: int, config) -> None:
    """One ready interval of Adam steps on ``member`` (its ``genes``, ``tensors``, ``optimizer``: replaced
    by the trained ones), with ``worker``'s model as scratch space, which then holds the trained weights.
    The driver's worker runs it in-process, a Ray actor's worker on Ray: the same seeded arithmetic."""
    values = genome.decode(member["genes"])
    _load_weights(worker.space, member["tensors"])
    parameters = worker.space.parameters
    optimizer = torch.optim.Adam(parameters, lr=values["learning_rate"], weight_decay=values["weight_decay"])
    if member["optimizer"] is not None:
        # A deep copy: load_state_dict may keep the stored tensors, and Adam updates them in place.
        optimizer.load_state_dict(copy.deepcopy(member["optimizer"]))
        for group in optimizer.param_groups:  # the member's (possibly explored) hyperparameters win
            group["lr"], group["weight_decay"] = values["learning_rate"], values["weight_decay"]
    generator = torch_generator(run_seed, "pbt-batches", index, generation)
    batch_size = values["batch_size"]
    steps = config.strategy.pbt_steps
    genome.apply(worker.model, member["genes"])  # dropout
    worker.model.train()
    with torch.enable_grad(), scoped_torch_seed(derive_seed(run_seed, "pbt-dropout", index, generation)):
        for p in parameters:
            p.requires_grad_(True)
        for _ in range(steps):
            batch = worker.corpus.sample_batch(batch_size, generator).to(worker.device)
            logits = worker.model(batch.inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    worker.model.eval()
    genome.undo(worker.model, member["genes"])
    for p in parameters:
        p.grad = None
    member["tensors"] = _copy_weights(worker.space)
    member["optimizer"] = copy.deepcopy(optimizer.state_dict())


@torch.no_grad()
def score_member(worker, context) -> tuple:
    """The fitness of the member :func:`train_member` just trained (still in ``worker``'s model) on the
    generation's shared fitness ``context``; counts its forward tokens on the worker."""
    fitness = worker.fitness(worker.model, context)
    worker.forward_tokens += worker.fitness.tokens(context)
    return fitness


def _state_of(member: dict) -> dict:
    """A Ray member's ``tensors`` and ``optimizer``: its stored state, or fetched by its handle."""
    state = member["state"]
    return state if isinstance(state, dict) else state.state()


def _weights_of(state) -> list[torch.Tensor]:
    """A Ray member's evolving weights alone (not Adam's moments): from its dict, or fetched by its handle."""
    return state["tensors"] if isinstance(state, dict) else state.weights()


def _copy_weights(space) -> list[torch.Tensor]:
    """A member's own copy of the evolving tensors."""
    return [t.detach().clone() for t in space.tensors]


def _load_weights(space, tensors) -> None:
    """Write a member's tensors into the worker's evolving tensors, in place."""
    for tensor, value in zip(space.tensors, tensors):
        tensor.copy_(value)
