"""What each method adds to the memory of a process that holds the same model for inference.

The model is a GPT built from config, big enough that its weights dominate the process
(``model.width=1024, model.layers=4, model.heads=8, model.ff=4096``: 50,927,872 parameters, 204 MB
of float32), scored on a tiny fitness batch (one 16-token row, 2 validation windows, 2 prompts) so
that activations are negligible. Every case runs in a fresh subprocess and reads the kernel's peak
resident set size (``VmHWM`` in ``/proc/self/status``) at the end:

- ``inference``: the run config's corpus, model and fitness, running what a run does for its base
  model (the fitness forward, validation loss and report) for the same generations; it imports
  the engine too, so imports cancel out;
- ``mezo``: the MeZO baseline (:mod:`evolm.baselines.mezo`), the reference that adds almost nothing;
- ``es`` with a genome and a center step, through the real engine (:func:`evolm.engine.run`:
  evaluation, update, validation, report, checkpoint, final save), at several population sizes.

``added_bytes`` = case peak - inference peak, also as a multiple of the weight bytes. Components
are *counted* from the tensors the process holds after its last generation, just before the engine
frees the search state (the worker's undo snapshot, the
optimiser moments, the genome's noise buffers, a baseline's frozen reference model); ``other`` is
the *measured* remainder (population activations, engine, allocator). The peak of each phase is
measured too, by resetting the kernel's high-water mark around it (``/proc/self/clear_refs``):
``loop`` (start-up and generations), ``checkpoint`` (checkpoint writes), ``final_save``
(model.safetensors) and ``finish`` (the plot, which imports matplotlib, and a sample).
The wrappers that do this only read /proc; the engine runs unchanged.

    python benchmarks/memory.py                      # the full grid (slow: every ES individual regenerates 51M noise values)
    python benchmarks/memory.py --populations 16,256 --lowrank-populations 16,1024
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_result

MODEL = [("model.width", "1024"), ("model.layers", "4"), ("model.heads", "8"), ("model.ff", "4096")]
# Tiny batches: the weights, not the activations, must dominate; identical in every case.
TINY = [
    ("model.context", "16"),
    ("data.batch_size", "1"),
    ("data.val_sequences", "2"),
    ("fitness.prompts", "2"),
    ("threads", "1"),
]
GENERATIONS = 1
MEZO_STEPS = 2


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


class Phases:
    """Peak RSS per phase: the high-water mark is folded into the overall peak and reset around each phase."""

    def __init__(self):
        self.overall = 0
        self.peaks: dict[str, int] = {}
        self.resettable = True

    def _reset(self) -> None:
        self.overall = max(self.overall, _status("VmHWM"))
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def wrap(self, module, name: str, phase: str) -> None:
        function = getattr(module, name, None)
        if function is None:
            return

        def wrapped(*args, **kwargs):
            self.end("loop")
            try:
                return function(*args, **kwargs)
            finally:
                self.end(phase)

        setattr(module, name, wrapped)

    def end(self, phase: str) -> None:
        """Close the phase running since the last reset."""
        if self.resettable:
            self.peaks[phase] = max(self.peaks.get(phase, 0), _status("VmHWM"))
        self._reset()

    def finish(self) -> dict:
        self.end("after" if "loop" in self.peaks else "loop")
        return {"peak_rss_bytes": self.overall, "phase_peak_bytes": self.peaks if self.resettable else None}


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _overrides(args) -> list[tuple[str, str]]:
    return [*MODEL, *TINY, ("generations", str(GENERATIONS)), *[tuple(item.split("=", 1)) for item in args.set]]


def child(args) -> dict:
    import torch

    from evolm import engine
    from evolm.config import build_config
    from evolm.data import Corpus
    from evolm.fitness import build_fitness, mean_log_likelihood
    from evolm.models import build_model

    config = build_config(overrides=_overrides(args))
    phases = Phases()
    components: dict[str, int] = {}
    out = Path(tempfile.mkdtemp(prefix="evolm-memory-"))
    if args.child == "inference":
        device = torch.device(config.device)
        corpus = Corpus.load(config.data.path or None, config.model.context, config.data.val_fraction)
        model = build_model(config.model, config.seed).to(device).eval()
        fitness = build_fitness(config, corpus, device, model)
        val_batch = corpus.validation_batch(config.data.val_sequences).to(device)
        with torch.no_grad():
            mean_log_likelihood(model, val_batch)
            fitness.report(model, -1)
            for generation in range(config.generations):
                fitness(model, fitness.context(generation))
                mean_log_likelihood(model, val_batch)
                fitness.report(model, generation)
        weights = _nbytes(model.parameters())
        parameters = sum(p.numel() for p in model.parameters())
    elif args.child == "mezo":
        from evolm.baselines import mezo

        runs = []

        class RecordingRun(mezo.BaselineRun):  # remembers the run to count what it holds; changes nothing
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                runs.append(self)

        mezo.BaselineRun = RecordingRun
        mezo.run_mezo(config, out / "run", steps=MEZO_STEPS, log=lambda *a, **k: None)
        run = runs[0]
        weights = _nbytes(run.model.parameters())
        parameters = sum(p.numel() for p in run.model.parameters())
        if run._reference is not None:
            components["frozen_reference_model"] = _nbytes(run._reference.parameters())
        components["noise_buffer"] = 4 * max(p.numel() for p in run.model.parameters())
    else:
        workers = []
        make_worker = engine.make_worker

        def count(worker) -> dict:
            """What the worker holds beyond the model: counted while the search state is still alive."""
            held = {"weights_snapshot": worker.space.snapshot_bytes()}
            state = worker.optimizer_state()
            held["optimizer_state"] = (
                0
                if state is None
                else sum(_nbytes([v for k, v in s.items() if k != "step"]) for s in state["state"].values())
            )
            held["noise_buffers"] = worker.genome.buffer_bytes()
            reference = getattr(worker.fitness, "reference", None)
            if reference is not None:
                held["frozen_reference_model"] = _nbytes(reference.parameters())
            return held

        def recording_make_worker(*a, **k):  # remembers the driver's worker to count what it holds
            worker = make_worker(*a, **k)
            release = worker.release_search_state

            def counting_release():  # the engine frees the search state after the final save: count it first
                components.update(count(worker))
                release()

            worker.release_search_state = counting_release
            workers.append(worker)
            return worker

        engine.make_worker = recording_make_worker
        phases.wrap(engine, "save_checkpoint", "checkpoint")
        phases.wrap(engine, "save_model_file", "final_save")
        phases.wrap(engine, "_finish", "finish")  # fitness.png (matplotlib) and a sample of the final model
        engine.run(config, out / "run", progress=False, log=lambda *a, **k: None)
        worker = workers[0]
        weights = _nbytes(worker.space.parameters)
        parameters = sum(p.numel() for p in worker.model.parameters())
    result = phases.finish()
    return {**result, "weight_bytes": weights, "parameters": parameters, "counted": components}


def measure(case: str, extra: list[str]) -> dict:
    command = [sys.executable, __file__, "--child", case]
    for item in extra:
        command += ["--set", item]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def cases(args) -> list[tuple[str, str, list[str]]]:
    """(label, child mode, config overrides) for every measured case."""
    grid = [("inference", "inference", []), ("mezo", "mezo", [])]
    every = [] if args.checkpoint_every is None else [f"checkpoint_every={args.checkpoint_every}"]
    for population in args.populations:
        for optimizer in ("sgd", "adam"):
            grid.append(
                (
                    f"es/seed/{optimizer}/p{population}",
                    "es",
                    [
                        f"strategy.population_size={population}",
                        "genome.name=seed",
                        f"strategy.optimizer={optimizer}",
                        *every,
                    ],
                )
            )
    for population in args.lowrank_populations:
        grid.append(
            (
                f"es/lowrank/adam/p{population}",
                "es",
                [
                    f"strategy.population_size={population}",
                    "genome.name=lowrank",
                    "strategy.optimizer=adam",
                    f"genome.batch_individuals={args.lowrank_batch}",
                    *every,
                ],
            )
        )
    for population in args.no_checkpoint_populations:
        grid.append(
            (
                f"es/seed/adam/p{population}/checkpoint_every=0",
                "es",
                [
                    f"strategy.population_size={population}",
                    "genome.name=seed",
                    "strategy.optimizer=adam",
                    "checkpoint_every=0",
                ],
            )
        )
    return grid


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["inference", "mezo", "es"])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--populations", type=_sizes, default=[16, 256, 1024], help="seed genome, sgd and adam")
    parser.add_argument("--lowrank-populations", type=_sizes, default=[16, 256, 1024])
    parser.add_argument(
        "--lowrank-batch",
        type=int,
        default=16,
        help="genome.batch_individuals for lowrank (16: EGGROLL's batched pass, the CUDA default; 1: in place)",
    )
    parser.add_argument(
        "--no-checkpoint-populations",
        type=_sizes,
        default=[16],
        help="also run es/seed/adam with checkpoint_every=0 at these sizes",
    )
    parser.add_argument("--checkpoint-every", type=int, default=None, help="for the es cases (default: the config's)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = {label: measure(mode, extra) for label, mode, extra in cases(args)}
    reference = results["inference"]["peak_rss_bytes"]
    weights = results["inference"]["weight_bytes"]
    rows, table = {}, []
    for label, result in results.items():
        added = result["peak_rss_bytes"] - reference
        counted = result["counted"]
        components = {**counted, "other_measured": added - sum(counted.values())}
        phase = result.get("phase_peak_bytes") or {}
        loop = phase.get("loop", result["peak_rss_bytes"]) - reference
        rows[label] = {
            **result,
            "added_bytes": added,
            "added_over_weights": round(added / weights, 3),
            "components": components,
            "added_bytes_generations": loop,
            "added_over_weights_generations": round(loop / weights, 3),
        }
        table.append(
            [
                label,
                f"{result['peak_rss_bytes'] / 1e6:.0f}",
                f"{added / 1e6:.0f}",
                f"{added / weights:.2f}",
                f"{loop / weights:.2f}",
                ", ".join(f"{k} {v / 1e6:.0f}" for k, v in components.items()),
                ", ".join(f"{k} {(v - reference) / 1e6:.0f}" for k, v in phase.items()),
            ]
        )
    path = write_result(
        "memory",
        {
            "model": dict(MODEL),
            "tiny_batch": dict(TINY),
            "generations": GENERATIONS,
            "mezo_steps": MEZO_STEPS,
            "parameters": results["inference"]["parameters"],
            "weight_bytes": weights,
            "population_sizes": {"seed": args.populations, "lowrank": args.lowrank_populations},
            "lowrank_batch_individuals": args.lowrank_batch,
            "inference_peak_rss_bytes": reference,
            "counted_components": [
                "weights_snapshot",
                "optimizer_state",
                "noise_buffers",
                "frozen_reference_model",
                "noise_buffer",
            ],
            "measured_components": ["other_measured"],
            "cases": rows,
        },
    )
    print(f"wrote {path}")
    print(
        f"model: {results['inference']['parameters']:,} parameters, {weights / 1e6:.0f} MB of weights; "
        f"inference peak {reference / 1e6:.0f} MB; MB added over it:"
    )
    print_table(
        [
            "case",
            "peak MB",
            "added MB",
            "x weights",
            "x weights (generations)",
            "components MB (counted; other measured)",
            "added at phase peaks MB",
        ],
        table,
    )


if __name__ == "__main__":
    main()
