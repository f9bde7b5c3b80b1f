"""Optional gradient refinement beside evolution: every k generations, K gradient steps on the ES
center (es) or the best individual (ga, nsga2).

Two losses: ``likelihood`` (cross-entropy on real text) or ``self`` (the seed document's
self-feedback loss: cross-entropy on real text plus the margin term max(0, m + s_n - s_p), where
s_p is the model's mean log-likelihood of real text and s_n that of its own generations).

Lamarckian refinement writes the refined weights back: it travels to workers as a small
:class:`RefineUpdate` (which genes to fold into the base, which generation, how many steps), and
every worker takes the identical seeded gradient steps itself, so no weights cross a process
boundary. Baldwinian refinement only keeps the fitness: the driver refines a copy, scores it,
restores the weights, and the individual's fitness becomes the refined score (Hinton & Nowlan
1987, "How learning can guide evolution").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evolm.errors import UsageError
from evolm.seeding import derive_seed, scoped_torch_seed, torch_generator

MODES = ("lamarckian", "baldwinian")
LOSSES = ("likelihood", "self")
OPTIMIZERS = ("adam", "sgd")


def validate_refine_config(config) -> None:
    refine = config.refine
    if refine.every < 0:
        raise UsageError(f"config field refine.every must be 0 (off) or positive, got {refine.every}")
    if not refine.every:
        return
    if refine.steps <= 0:
        raise UsageError(f"config field refine.steps must be positive, got {refine.steps}")
    if refine.mode not in MODES:
        raise UsageError(f"config field refine.mode: unknown mode {refine.mode!r} (choose from {', '.join(MODES)})")
    if refine.loss not in LOSSES:
        raise UsageError(f"config field refine.loss: unknown loss {refine.loss!r} (choose from {', '.join(LOSSES)})")
    if refine.optimizer not in OPTIMIZERS:
        raise UsageError(f"config field refine.optimizer: unknown optimizer {refine.optimizer!r} (adam or sgd)")
    if refine.learning_rate <= 0:
        raise UsageError(f"config field refine.learning_rate must be positive, got {refine.learning_rate}")
    if config.strategy.name not in ("es", "ga", "nsga2"):
        raise UsageError(
            f"config field refine.every: refinement works with es, ga or nsga2, not {config.strategy.name!r}"
        )
    if config.genome.name == "vector":
        raise UsageError(
            "config field refine.every: refinement needs a seed or lowrank genome (vector genes cannot absorb it)"
        )


def refinement_loss(model, config, generator: torch.Generator, corpus, device) -> torch.Tensor:
    """The configured refinement loss on one training batch drawn from ``generator``."""
    batch = corpus.sample_batch(config.refine.batch_size, generator).to(device)
    logits = model(batch.inputs)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1))
    if config.refine.loss == "self":
        prompts = batch.inputs[: config.fitness.prompts, : config.fitness.prompt_tokens]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            continuation = model.generate(
                prompts, config.fitness.generate_tokens, config.fitness.temperature, generator
            )
        model.train(was_training)
        sequence = torch.cat([prompts, continuation], dim=1)
        context = getattr(getattr(model, "config", None), "context", None)
        if context:
            sequence = sequence[:, -(context + 1) :]
        own_logits = model(sequence[:, :-1])
        own = -F.cross_entropy(
            own_logits[:, -continuation.shape[1] :].reshape(-1, own_logits.shape[-1]),
            sequence[:, -continuation.shape[1] :].reshape(-1),
        )
        real = -loss
        loss = loss + torch.clamp(config.fitness.margin + own - real, min=0.0)
    return loss


def refinement_tokens(config) -> int:
    """Tokens one refinement puts through forward passes (counted once, however many workers repeat it)."""
    per_step = config.refine.batch_size * config.model.context
    if config.refine.loss == "self":
        per_step += config.fitness.prompts * (2 * config.fitness.generate_tokens + config.fitness.prompt_tokens)
    return per_step * config.refine.steps


def refine_in_place(worker, generation: int, steps: int) -> float:
    """K seeded gradient steps on the worker's evolving tensors; a fresh optimiser each call (stateless, exact on resume)."""
    config = worker.config
    parameters = worker.space.parameters
    frozen = [p for p in worker.model.parameters() if all(p is not q for q in parameters)]
    saved_flags = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    optimizer: torch.optim.Optimizer
    if config.refine.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=config.refine.learning_rate)
    else:
        optimizer = torch.optim.SGD(parameters, lr=config.refine.learning_rate)
    generator = torch.Generator().manual_seed(derive_seed(config.seed, "refine", generation))
    loss_value = float("nan")
    # A module left in training mode (a user's, through the Python API) draws dropout masks from torch's
    # global RNG: seed it for these steps only, so every worker takes the same steps and the caller's
    # state is given back.
    with torch.enable_grad(), scoped_torch_seed(derive_seed(config.seed, "refine-dropout", generation)):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = refinement_loss(worker.model, config, generator, worker.corpus, worker.device)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
    for p, flag in zip(frozen, saved_flags):
        p.requires_grad_(flag)
    for p in parameters:
        p.grad = None
    return loss_value


@dataclass
class RefineUpdate:
    """Fold ``genes`` (None: the base itself) into the base, then take the seeded refinement steps."""

    genes: list | None
    generation: int
    steps: int

    def apply(self, worker) -> None:
        if self.genes:
            worker.genome.apply(worker.model, self.genes)
        refine_in_place(worker, self.generation, self.steps)
        worker.space.commit()


def maybe_refine(config, strategy, worker, evaluator, generation: int) -> dict:
    """Refine when the schedule says so; returns metrics (``refined_fitness``, ``extra_forward_tokens``) or {}."""
    refine = config.refine
    if not refine.every or (generation + 1) % refine.every:
        return {}
    if refine.mode == "lamarckian":
        genes = strategy.fold_best_into_base()
        evaluator.apply_update(RefineUpdate(genes, generation, refine.steps))
        context = worker.fitness_context(strategy.context_generation(generation))
        (refined,) = worker.fitness(worker.model, context)[:1]
        strategy.after_refinement(refined)
        return {"refined_fitness": refined, "extra_forward_tokens": refinement_tokens(config)}
    # Baldwinian: refine the reported model on the driver only, keep its score, restore the weights.
    genes = strategy.best_genes()
    with worker.applied(genes):
        snapshot = [t.clone() for t in worker.space.tensors]
        refine_in_place(worker, generation, refine.steps)
        context = worker.fitness_context(strategy.context_generation(generation))
        refined = worker.fitness(worker.model, context)
        for tensor, value in zip(worker.space.tensors, snapshot):
            tensor.copy_(value)
    strategy.assign_refined_fitness(refined)
    return {"refined_fitness": refined[0], "extra_forward_tokens": refinement_tokens(config)}


__all__ = [
    "RefineUpdate",
    "maybe_refine",
    "refine_in_place",
    "refinement_loss",
    "validate_refine_config",
    "torch_generator",
]
