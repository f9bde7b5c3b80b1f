"""The seed document's training loop: next-token cross-entropy on random training windows, Adam.

Adam: Kingma & Ba 2014, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980. This is the
baseline every evolution run is measured against: same corpus, same model, same initial weights.

One step: draw ``batch_size`` windows of ``context`` tokens from the training split (a generator
derived from the run seed), one forward pass (``batch_size * context`` forward tokens), backward,
Adam update. A step's fitness is its batch's mean log-likelihood (minus the loss), before the update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evolm.baselines.harness import BaselineRun, check_positive
from evolm.seeding import derive_seed, scoped_torch_seed, torch_generator


def run_adam(
    config,
    out_dir,
    budget_seconds=None,
    budget_tokens=None,
    log=print,
    *,
    learning_rate: float = 3e-3,
    batch_size: int = 32,
    steps: int | None = None,
    log_every: int = 25,
    overwrite: bool = False,
) -> dict:
    """Train with Adam until the first of ``budget_seconds``, ``budget_tokens`` or ``steps`` runs out.

    ``batch_size`` 32 (windows of ``model.context`` tokens) and ``learning_rate`` 3e-3 are the reference
    workload's (benchmarks/README.md). Returns the summary also written to ``summary.json``.
    """
    check_positive("learning_rate", learning_rate)
    check_positive("batch_size", batch_size)
    options = {"learning_rate": learning_rate, "batch_size": batch_size, "log_every": log_every}
    run = BaselineRun("adam", config, out_dir, budget_seconds, budget_tokens, steps, log_every, overwrite, log)
    try:
        model = run.model
        optimizer = torch.optim.Adam(run.trainable_parameters(), lr=learning_rate)
        batches = torch_generator(config.seed, "adam", "batches")
        step_tokens = batch_size * config.model.context
        run.announce(f"Adam lr {learning_rate:g}, batch {batch_size}x{config.model.context}")
        model.train()
        # Dropout (if configured) draws from torch's global RNG: seed it from the run seed, scoped to the loop.
        with scoped_torch_seed(derive_seed(config.seed, "adam", "dropout")):
            while run.can_step(step_tokens):
                batch = run.corpus.sample_batch(batch_size, batches).to(run.device)
                logits = model(batch.inputs)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.reshape(-1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                run.record([-loss.item()], step_tokens)
                run.maybe_log()
        return run.finish(options)
    finally:
        run.close()
