"""Resume after SIGKILL: a real ``evolm run`` killed at a random generation, then ``evolm resume``, ends
with the same metrics.jsonl as an uninterrupted run (apart from wall_seconds)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY, read_metrics, run_cli, without_wall_clock

def rows(run_dir):
    return without_wall_clock(read_metrics(run_dir))


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
    process = subprocess.Popen([sys.executable, "-m", "evolm", "run", *args, "--out", str(out), "--quiet"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
