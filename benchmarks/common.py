"""Shared by the benchmark scripts: machine description, interleaved timing, and the JSON writer."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": __import__("os").cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["ray"] = importlib.metadata.version("ray")  # without importing Ray: only evolm.evaluators does
    except importlib.metadata.PackageNotFoundError:
        pass
    return info


def interleaved(functions: dict, repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, interleaved (A B C A B C ...), after ``warmup`` rounds."""
    times = {name: [] for name in functions}
    for round_index in range(warmup + repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {**data, "machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def antithetic_genes(counter, population: int) -> list:
    """An ES population of antithetic pairs (scale 0.02) with seeds ``counter`` never gave before."""
    genes = []
    for _ in range(population // 2):
        seed = next(counter)
        genes += [[(seed, 0.02)], [(seed, -0.02)]]
    return genes
