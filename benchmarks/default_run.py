"""The default ``evolm run`` (the README's quick start), timed and measured from outside.

Runs ``evolm run --out DIR --quiet`` (the quick-start command; ``--out`` and ``--quiet`` change
neither the work nor the result) as a subprocess under ``/usr/bin/time -v`` when it exists (else
``resource.getrusage`` of the children), and writes ``benchmarks/results/default_run.json``: wall
seconds from the command to its end, seconds in the generation loop (``summary.json``'s
``wall_seconds``), generations, validation loss, self-score and distinct-2 at the start and the end,
peak RSS, CPU seconds, the load average before the run, the machine and the exact command.

``--generations N`` runs a shorter smoke test (the JSON then says ``"default_run": false``). The
figures are one run on a shared machine: run it when the machine is quiet (the load average is
recorded to show whether it was). See benchmarks/README.md for the measuring rules.

    python benchmarks/default_run.py                  # the default run (about 2 minutes on 2 cores)
    python benchmarks/default_run.py --generations 5  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result

TIME = Path("/usr/bin/time")
# /usr/bin/time -v lines this script keeps, and the JSON names they get.
TIME_FIELDS = {
    "Maximum resident set size (kbytes)": "peak_rss_kb",
    "User time (seconds)": "user_seconds",
    "System time (seconds)": "system_seconds",
    "Percent of CPU this job got": "cpu_percent",
}


def evolm_executable() -> str:
    """The ``evolm`` console script of this interpreter's environment (what the quick start installs)."""
    beside = Path(sys.executable).parent / "evolm"
    found = str(beside) if beside.exists() else shutil.which("evolm")
    if not found:
        sys.exit("default_run.py: no evolm command found; install the project first (pip install -e '.[dev,hf]')")
    return found


def parse_time_report(text: str) -> dict:
    """The kept fields of a ``/usr/bin/time -v`` report, as numbers."""
    values = {}
    for line in text.splitlines():
        name, _, value = line.strip().rpartition(": ")
        if name in TIME_FIELDS:
            values[TIME_FIELDS[name]] = float(value.rstrip("%"))
    return values


def measure(command: list[str]) -> dict:
    """Run ``command`` to its end; wall seconds, peak RSS (MB) and CPU seconds, from outside the process."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "time.txt"
        wrapped = [str(TIME), "-v", "-o", str(report), *command] if TIME.exists() else command
        start = time.perf_counter()
        result = subprocess.run(wrapped, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(f"default_run.py: {' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        if TIME.exists():
            figures = parse_time_report(report.read_text())
            source = "/usr/bin/time -v"
        else:  # the largest child's peak; this script starts only the one
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            figures = {
                "peak_rss_kb": usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1),
                "user_seconds": usage.ru_utime,
                "system_seconds": usage.ru_stime,
            }
            source = "resource.getrusage(RUSAGE_CHILDREN)"
    return {
        "wall_seconds_command": round(wall, 2),
        "peak_rss_mb": round(figures.pop("peak_rss_kb") / 1024, 1),
        **figures,
        "measured_with": source,
        # The run's own closing line; the sample that follows it is random bytes early on.
        "done_line": next((line for line in result.stdout.splitlines() if line.startswith("evolm: done")), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, help="a shorter run for a smoke test (default: the default run's)")
    parser.add_argument("--run-dir", help="keep the run folder here (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    if args.generations is not None and args.generations <= 0:
        parser.error("--generations must be positive")

    keep = Path(args.run_dir) if args.run_dir else None
    scratch = None if keep else tempfile.TemporaryDirectory(prefix="evolm-default-run-")
    run_dir = keep or Path(scratch.name) / "run"
    command = [evolm_executable(), "run", "--out", str(run_dir), "--quiet"]
    if args.generations is not None:
        command += ["--generations", str(args.generations)]
    load_before = os.getloadavg()
    try:
        measured = measure(command)
        summary = json.loads((run_dir / "summary.json").read_text())
    finally:
        if scratch is not None:
            scratch.cleanup()

    data = {
        "default_run": args.generations is None,
        "run_command": " ".join(["evolm", *command[1:]]),
        "wall_seconds_command": measured["wall_seconds_command"],
        "wall_seconds_loop": summary["wall_seconds"],
        "generations": summary["generations"],
        "evaluations": summary["evaluations"],
        "forward_tokens": summary["forward_tokens"],
        "val_loss_initial": summary["val_loss_initial"],
        "val_loss_final": summary["val_loss_final"],
        "self_score_initial": summary.get("self_score_initial"),
        "self_score_final": summary.get("self_score_final"),
        "distinct_2_initial": summary.get("distinct_2_initial"),
        "distinct_2_final": summary.get("distinct_2_final"),
        "peak_rss_mb": measured["peak_rss_mb"],
        "user_seconds": measured.get("user_seconds"),
        "system_seconds": measured.get("system_seconds"),
        "cpu_percent": measured.get("cpu_percent"),
        "measured_with": measured["measured_with"],
        "load_average_before": [round(x, 2) for x in load_before],
        "done_line": measured["done_line"],
    }
    path = write_result("default_run", data)
    print(f"wrote {path}")
    title = "the default evolm run" if data["default_run"] else f"NOT the default run: --generations {args.generations}"
    print(f"{title}: {data['run_command']}")
    print_table(
        ["figure", "start", "end"],
        [
            [
                "wall seconds (command / loop)",
                "",
                f"{data['wall_seconds_command']:.1f} / {data['wall_seconds_loop']:.1f}",
            ],
            ["generations", "", data["generations"]],
            ["validation loss (nats)", f"{data['val_loss_initial']:.3f}", f"{data['val_loss_final']:.3f}"],
            ["self-score", f"{data['self_score_initial']:.2f}", f"{data['self_score_final']:.2f}"],
            ["distinct-2", f"{data['distinct_2_initial']:.2f}", f"{data['distinct_2_final']:.2f}"],
            ["peak RSS MB", "", f"{data['peak_rss_mb']:.0f}"],
        ],
    )


if __name__ == "__main__":
    main()
