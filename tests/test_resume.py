"""Resume after SIGKILL: a real ``evolm run`` killed at a random generation, then ``evolm resume``, ends
with the same metrics.jsonl as an uninterrupted run (apart from the wall-clock fields); and a run
resumed in-process leaves the caller's own random / numpy / torch RNG states alone."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, read_metrics, run_cli

from evolm.assembly import worker_from_config
from evolm.engine import WALL_CLOCK_FIELDS


def rows(run_dir):
    """What must repeat exactly: every field but the clock and what the clock decides (checkpoint cost)."""
    return [{k: v for k, v in row.items() if k not in WALL_CLOCK_FIELDS} for row in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    result = run_cli("run", *TINY, "--out", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    return out, result


# es (the default), ga and pbt: each strategy's state must survive a SIGKILL.
STRATEGY_ARGS = {
    "es": [],
    "ga": ["--strategy", "ga", "--set", "strategy.sigma=0.05"],
    "pbt": ["--strategy", "pbt", "--population-size", "4", "--set", "strategy.pbt_steps=4"],
}


@pytest.mark.parametrize("strategy", sorted(STRATEGY_ARGS))
def test_sigkill_then_resume_matches_an_uninterrupted_run(finished, tmp_path, strategy):
    args = [*TINY, *STRATEGY_ARGS[strategy]]
    if strategy == "es":
        whole, _ = finished
    else:
        whole = tmp_path / "whole"
        result = run_cli("run", *args, "--out", str(whole), "--quiet")
        assert result.returncode == 0, result.stderr
    out = tmp_path / "killed"
    kill_after = random.Random().randint(1, 10)  # a random generation, as the issue asks
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "evolm", "run", *args, "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= kill_after:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (out / "summary.json").exists()
    result = run_cli("resume", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert rows(out) == rows(whole), f"killed after {kill_after} lines"
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (out, whole))
    for key in ("evaluations", "forward_tokens", "val_loss_initial", "val_loss_final", "best_fitness"):
        assert summary[key] == expected[key], key


def test_resume_refuses_a_finished_run(finished):
    whole, _ = finished
    before = (whole / "metrics.jsonl").read_bytes()
    result = run_cli("resume", str(whole))
    assert result.returncode == 2 and "finished run" in result.stderr and "Traceback" not in result.stderr
    assert (whole / "metrics.jsonl").read_bytes() == before


def test_end_of_run_sample_and_plot(finished, tmp_path):
    whole, result = finished
    assert "sample" in result.stdout and (whole / "fitness.png").read_bytes().startswith(b"\x89PNG")
    sample = run_cli("sample", str(whole), "--prompt", "The ", "--tokens", "40")
    assert sample.returncode == 0 and sample.stdout.startswith("The ") and len(sample.stdout) > 20
    plot = run_cli("plot", str(whole), "--out", str(tmp_path / "p.png"))
    assert plot.returncode == 0 and (tmp_path / "p.png").stat().st_size > 1000
    bad = run_cli("sample", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ in-process: the caller's RNG states

IN_PROCESS = {
    "es": [],
    "ga": ["strategy.name=ga", "strategy.sigma=0.05"],  # DEAP's operators draw from the global random
    "pbt": ["strategy.name=pbt", "strategy.population_size=4", "strategy.pbt_steps=2"],  # dropout: torch's global RNG
    "es-auto-cadence": ["checkpoint_every=-1"],  # whichever generations auto checkpointed, resume is exact
}


def in_process_config(strategy):
    from evolm.config import build_config
    from evolm.config_io import parse_assignment

    settings = [
        "model.width=32",
        "model.layers=1",
        "model.heads=2",
        "model.ff=64",
        "model.context=32",
        "data.batch_size=8",
        "data.val_sequences=16",
        "strategy.population_size=8",
        "generations=6",
        "fitness.prompts=2",
        "fitness.generate_tokens=8",
        "threads=1",
        "report_every=1",  # interrupting_factory crashes a run in the report of a chosen generation
        *IN_PROCESS[strategy],
    ]
    return build_config(None, [parse_assignment(s) for s in settings])


def global_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def same_states(a, b) -> bool:
    return (
        a[0] == b[0]
        and all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a[1], b[1]))
        and torch.equal(a[2], b[2])
    )


class Interrupted(Exception):
    pass


def interrupting_factory(stop_at):
    """The standard worker, cut off while the engine logs generation ``stop_at`` (a crash mid-run)."""

    def factory(config):

        worker = worker_from_config(config)
        report = worker.report

        def report_until(generation, genes=None):
            if generation == stop_at:
                raise Interrupted
            return report(generation, genes)

        worker.report = report_until
        return worker

    return factory


@pytest.mark.parametrize("strategy", sorted(IN_PROCESS))
def test_run_and_resume_in_process_leave_the_callers_rng_states_alone(tmp_path, strategy):
    from evolm import engine

    config = in_process_config(strategy)
    random.seed(1234)
    np.random.seed(99)
    torch.manual_seed(7)
    whole = tmp_path / "whole"
    before = global_states()
    engine.run(config, whole, progress=False, log=lambda *_: None)
    assert same_states(global_states(), before), "a run changed the caller's RNG states"

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        engine.run(config, cut, progress=False, log=lambda *_: None, worker_factory=interrupting_factory(3))
    assert len(read_metrics(cut)) == 3 and not (cut / "summary.json").exists()
    # The caller's program goes on drawing between the crash and the resume: resuming must not rewind it.
    random.random(), np.random.random(), torch.rand(1)
    before = global_states()
    engine.resume(cut, progress=False, log=lambda *_: None)
    assert same_states(global_states(), before), "resuming changed the caller's RNG states"
    assert rows(cut) == rows(whole)
    # ... and the caller's draws do not leak into a run either: a run started from other states is the same run.
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(8)
    other = tmp_path / "other"
    engine.run(config, other, progress=False, log=lambda *_: None)
    assert rows(other) == rows(whole)


def test_checkpoint_of_an_older_evolm_with_rng_states_still_resumes(tmp_path):
    """Checkpoints written before this change hold global RNG states under "rng": they are ignored."""
    from evolm import engine
    from evolm.checkpoint import load_checkpoint, save_checkpoint

    config = in_process_config("es")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    engine.run(config, whole, progress=False, log=lambda *_: None)
    with pytest.raises(Interrupted):
        engine.run(config, cut, progress=False, log=lambda *_: None, worker_factory=interrupting_factory(2))
    old = load_checkpoint(cut)
    legacy_rng = {"python": {"type": "python", "version": 3, "internal": [0] * 625, "gauss_next": None}}
    save_checkpoint(cut, {**old, "state": {**old["state"], "rng": legacy_rng}})
    before = global_states()
    engine.resume(cut, progress=False, log=lambda *_: None)
    assert same_states(global_states(), before)
    assert rows(cut) == rows(whole)


def test_scoped_torch_seed_seeds_only_inside_and_never_reseeds_cuda():
    """evolm.seeding.scoped_torch_seed: torch.manual_seed's numbers inside, the caller's state after, CUDA untouched.

    ``fork_rng(devices=[])`` + ``torch.manual_seed`` reseeded CUDA for good (or queued the reseed for
    when CUDA starts, on a machine where it has not yet)."""
    from evolm.seeding import scoped_torch_seed

    torch.manual_seed(11)
    torch.rand(2)
    cpu_before = torch.get_rng_state()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.zeros(1, device="cuda")  # CUDA initialised, as it is once a model lives there
        cuda_before = torch.cuda.get_rng_state_all()
    tracker = torch.cuda._lazy_seed_tracker  # where torch queues a CUDA reseed until CUDA starts
    queued_before = tracker.manual_seed_all_cb
    with scoped_torch_seed(123):
        inside = torch.rand(4)
        if cuda:
            inside_cuda = torch.rand(4, device="cuda")
    assert tracker.manual_seed_all_cb is queued_before, "a CUDA reseed was queued for the caller's CUDA"
    assert torch.equal(torch.get_rng_state(), cpu_before)
    if cuda:  # needs a GPU: on CPU-only machines the queue check above is the CUDA part of this test
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_before))
        with scoped_torch_seed(123):
            assert torch.equal(torch.rand(4, device="cuda"), inside_cuda)  # seeded on the device too
    torch.manual_seed(123)
    assert torch.equal(inside, torch.rand(4))  # the numbers of torch.manual_seed: model initialisation is unchanged


# ------------------------------------------------------------------ checkpoint cadence and its cost in metrics.jsonl


def test_each_line_reports_the_checkpoint_written_since_the_line_before(tmp_path):
    from evolm import engine
    from evolm.checkpoint import load_checkpoint
    from evolm.config_io import set_dotted

    config = in_process_config("es")
    set_dotted(config, "generations", 4)
    set_dotted(config, "checkpoint_every", 1)
    summary = engine.run(config, tmp_path / "every", progress=False, log=lambda *_: None)
    lines = read_metrics(tmp_path / "every")
    assert lines[0]["checkpoint_bytes"] == 0 and lines[0]["checkpoint_seconds"] == 0  # nothing written before it
    folder = tmp_path / "every" / "checkpoint"
    on_disk = sum(f.stat().st_size for f in folder.iterdir())
    # Every later line carries the checkpoint written after the previous one: weights, Adam's two moments, state.
    weights = sum(t.numel() * t.element_size() for t in load_checkpoint(tmp_path / "every")["tensors"].values())
    for line in lines[1:]:
        assert weights < line["checkpoint_bytes"] < weights + 65536 and line["checkpoint_seconds"] > 0
    assert summary["last_checkpoint_bytes"] == on_disk and summary["last_checkpoint_seconds"] > 0

    set_dotted(config, "checkpoint_every", 0)
    summary = engine.run(config, tmp_path / "none", progress=False, log=lambda *_: None)
    assert all(
        line["checkpoint_bytes"] == 0 and line["checkpoint_seconds"] == 0 for line in read_metrics(tmp_path / "none")
    )
    assert summary["last_checkpoint_bytes"] == 0 and not (tmp_path / "none" / "checkpoint").exists()


def test_auto_cadence_spends_at_most_a_twentieth_of_the_time_on_checkpoints():
    from evolm.engine import AUTO_CHECKPOINT_RATIO, CheckpointCadence

    assert AUTO_CHECKPOINT_RATIO >= 19  # cost / (interval + cost) <= 5%
    auto = CheckpointCadence(-1)
    assert auto.due(0, last=False)  # the first measures what a checkpoint costs
    auto.done(3600.0)  # an hour-long checkpoint: the next one is 20 hours away ...
    assert not auto.due(1, last=False) and not auto.due(2, last=False)
    assert auto.due(3, last=True)  # ... but the last generation is always saved
    auto.done(0.0)  # a free checkpoint: every generation
    assert auto.due(4, last=False)
    every = CheckpointCadence(3)
    assert [g for g in range(8) if every.due(g, last=g == 7)] == [2, 5, 7]
    assert not any(CheckpointCadence(0).due(g, last=True) for g in range(3))
