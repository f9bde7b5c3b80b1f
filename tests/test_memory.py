"""What an ES worker adds over inference, measured from the operating system in fresh processes.

A 25M-parameter GPT (about 100 MB of float32 weights, above the genome's noise-cache budget) with
a one-token-row fitness batch, so the weights dominate: a plain inference process running the
same forwards against two ES generations through the worker, strategy and update. The ES process
may add its exact-undo snapshot (1x the weights), Adam's two moments (2x more) and chunk-sized
scratch, nothing else model-sized (no noise buffer per tensor, no gradient per tensor, no import
of torch._dynamo by an optimiser). benchmarks/memory.py measures the same on a 51M model through
the whole engine.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evolm.assembly import worker_from_config
from evolm.config import build_config

CHILD = r"""
import json, re, sys
import torch
from evolm.config import build_config
from evolm.data import Corpus
from evolm.engine import step_generation
from evolm.evaluators import LocalEvaluator
from evolm.fitness import build_fitness
from evolm.strategies import make_strategy
from evolm.models import build_model
from evolm.assembly import worker_from_config

mode, optimizer = sys.argv[1], sys.argv[2]
config = build_config(overrides=[("model.width", 1024), ("model.layers", 2), ("model.heads", 8), ("model.ff", 4096),
                                 ("model.context", 16), ("data.batch_size", 1), ("data.val_sequences", 2),
                                 ("strategy.population_size", 4), ("strategy.optimizer", optimizer), ("threads", 1)])
if mode == "inference":
    corpus = Corpus.load(None, config.model.context, config.data.val_fraction)
    model = build_model(config.model, config.seed).eval()
    fitness = build_fitness(config, corpus, torch.device("cpu"), model)
    with torch.no_grad():
        for generation in range(2):
            fitness(model, fitness.context(generation))
else:
    worker = worker_from_config(config)
    model = worker.model
    strategy = make_strategy(config, worker)
    evaluator = LocalEvaluator(worker)
    for generation in range(2):
        step_generation(strategy, evaluator, generation)
peak = int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(json.dumps({"peak": peak, "weights": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


def peak(mode: str, optimizer: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, optimizer], capture_output=True, text=True, check=True, env=env, timeout=300
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from Linux's /proc")
def test_es_adds_one_weight_copy_with_sgd_and_three_with_adam():
    inference = peak("inference", "sgd")
    weights = inference["weights"]
    assert weights > 100e6  # the weights dominate: 25M float32 parameters
    sgd = (peak("es", "sgd")["peak"] - inference["peak"]) / weights
    adam = (peak("es", "adam")["peak"] - inference["peak"]) / weights
    # The snapshot (1x) and Adam's moments (2x), plus chunk scratch and the allocator: typically 0.99x and
    # 3.005x here, once 3.069x in a CI run (malloc's arenas and mmap threshold move a few MB between
    # processes). The next test counts the worker's buffers exactly; this one guards the whole process
    # (the code before chunked noise and updates added 6.1x).
    assert sgd <= 1.1, sgd
    assert adam <= 3.1, adam


def test_a_worker_holds_no_model_sized_buffer_but_the_snapshot_and_the_moments():
    config = build_config(
        overrides=[
            ("model.width", 32),
            ("model.layers", 1),
            ("model.heads", 2),
            ("model.ff", 64),
            ("model.context", 16),
            ("strategy.population_size", 4),
        ]
    )
    worker = worker_from_config(config)
    assert worker.genome.buffer_bytes() == 0  # a worker that has scored nothing holds no noise
    assert worker.optimizer_state() is None
    from evolm.strategies.es import EsUpdate

    worker.evaluate([[(1, 0.02)], [(1, -0.02)]], 0)
    EsUpdate([1, 2], [0.5, -0.25]).apply(worker)
    state = worker.optimizer_state()
    moments = [s["exp_avg"] for s in state["state"].values()]
    # The optimiser state is handed out without a copy: the very tensors the next step updates.
    again = worker.optimizer_state()
    assert all(a.data_ptr() == b["exp_avg"].data_ptr() for a, b in zip(moments, again["state"].values()))
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and state["param_groups"][0]["lr"] == 0.01
    # It loads into torch's own Adam over the same parameters.
    torch.optim.Adam(worker.space.parameters, lr=0.01).load_state_dict(state)


def test_a_finished_run_frees_its_search_state_before_the_closing_plot_and_sample(tmp_path):
    """The undo snapshot and Adam's moments (3x the weights) are dropped once the final weights are
    saved, so the closing plot and sample do not stack on the search's peak."""
    from evolm.engine import run

    workers = []

    def factory(config):
        worker = worker_from_config(config)
        workers.append(worker)
        return worker

    config = build_config(
        overrides=[
            ("model.width", 32),
            ("model.layers", 1),
            ("model.heads", 2),
            ("model.ff", 64),
            ("model.context", 16),
            ("data.batch_size", 2),
            ("data.val_sequences", 2),
            ("strategy.population_size", 4),
            ("generations", 2),
        ]
    )
    run(config, tmp_path / "run", progress=False, log=lambda *_: None, worker_factory=factory)
    (worker,) = workers
    assert worker.space.snapshot_bytes() == 0 and worker.optimizer_state() is None
    assert (tmp_path / "run" / "model.safetensors").exists()
