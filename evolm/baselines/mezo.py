"""MeZO: zeroth-order SGD with in-place, seeded perturbations, the closest gradient-free peer of ES.

Malladi et al. 2023, "Fine-Tuning Language Models with Just Forward Passes", arXiv:2305.17333
(Algorithm 1). Each step, with a fresh seed ``s`` and one training batch:

    theta += eps * z(s);  loss_plus  = L(theta)       # z regenerated tensor by tensor, never stored
    theta -= 2 eps * z(s); loss_minus = L(theta)
    theta += eps * z(s)                                 # back to theta (up to float rounding, as in the paper)
    g = (loss_plus - loss_minus) / (2 eps)              # projected gradient: an estimate of z . grad L
    theta -= lr * g * z(s)                              # SGD along z, regenerated once more from s

``z(s)`` is the seed genome's noise (:class:`evolm.genome.SeedGenome`, the noise of every ES run):
tensor ``i``'s values come from a generator seeded with ``mix_seed(s, i)``, so same-shaped tensors
never share noise (a tensor of 2**18 values or more continues in chunks from further derived seeds),
drawn on the tensor's device. Memory is the model's plus the noise of one tensor at a time: no
gradients, no optimiser state, no noise cache. A step costs two forward passes of the batch.

Defaults for the ~137k-parameter reference model: eps 1e-3 (the paper's) and lr 3e-3. The paper's
lr 1e-7 suits fine-tuning billion-parameter pretrained LMs; training this small model from its
initialisation takes far larger steps. Sweep on the reference workload (seed 0, 30 s, one thread,
validation loss from 5.75): lr 1e-3 -> 4.26, 3e-3 -> 3.42, 5e-3 -> 3.43, 1e-2 diverged within 20 s;
3e-3 keeps a 3x margin below divergence. Only parameters matching ``genome.params`` are perturbed,
as in an ES run.
"""

from __future__ import annotations

import torch

from evolm.baselines.harness import BaselineRun, check_positive
from evolm.fitness import mean_log_likelihood
from evolm.genome import ParamSpace, SeedGenome
from evolm.seeding import derive_seed, torch_generator


def perturbation_genome(model, pattern: str) -> SeedGenome:
    """The seed genome over the tensors matching ``pattern``, without a noise cache: MeZO never holds
    the whole model's noise, it regenerates each tensor's ``z`` from the step's seed when it needs it."""
    return SeedGenome(ParamSpace(model, pattern), cache_bytes=0)


def perturb(genome: SeedGenome, seed: int, scale: float) -> None:
    """theta_i += scale * z_i(seed) for every evolving tensor, in place (no snapshot: MeZO undoes by adding back)."""
    for index, tensor in enumerate(genome.space.tensors):
        tensor.add_(genome.noise(seed, index), alpha=scale)


def run_mezo(
    config,
    out_dir,
    budget_seconds=None,
    budget_tokens=None,
    log=print,
    *,
    learning_rate: float = 3e-3,
    epsilon: float = 1e-3,
    batch_size: int | None = None,
    steps: int | None = None,
    log_every: int = 100,
    overwrite: bool = False,
) -> dict:
    """Zeroth-order SGD until the first of ``budget_seconds``, ``budget_tokens`` or ``steps`` runs out.

    ``batch_size`` defaults to ``data.batch_size``, the batch an ES generation scores (equal forward
    tokens per evaluation). Returns the summary also written to ``summary.json``.
    """
    batch_size = batch_size or config.data.batch_size
    check_positive("learning_rate", learning_rate)
    check_positive("epsilon", epsilon)
    check_positive("batch_size", batch_size)
    options = {"learning_rate": learning_rate, "epsilon": epsilon, "batch_size": batch_size, "log_every": log_every}
    run = BaselineRun("mezo", config, out_dir, budget_seconds, budget_tokens, steps, log_every, overwrite, log)
    try:
        model = run.model.eval()  # deterministic forwards: dropout would break the finite difference
        genome = perturbation_genome(model, config.genome.params)  # what an ES run would evolve
        batches = torch_generator(config.seed, "mezo", "batches")
        step_tokens = 2 * batch_size * config.model.context
        run.announce(f"MeZO lr {learning_rate:g}, eps {epsilon:g}, batch {batch_size}x{config.model.context}")
        with torch.no_grad():
            while run.can_step(step_tokens):
                batch = run.corpus.sample_batch(batch_size, batches).to(run.device)
                seed = derive_seed(config.seed, "mezo", "perturbation", run.steps_done)
                perturb(genome, seed, epsilon)
                loss_plus = -mean_log_likelihood(model, batch)
                perturb(genome, seed, -2.0 * epsilon)
                loss_minus = -mean_log_likelihood(model, batch)
                perturb(genome, seed, epsilon)
                projected_gradient = (loss_plus - loss_minus) / (2.0 * epsilon)
                perturb(genome, seed, -learning_rate * projected_gradient)
                run.record([-loss_plus, -loss_minus], step_tokens)
                run.maybe_log()
        return run.finish(options)
    finally:
        run.close()
