"""The paths a GPU runs, checked on the CPU where they are the same code, and on CUDA where one is present.

On the CPU: a sampled token is exactly the one ``torch.multinomial`` draws from the same generator
(so texts per seed are unchanged), a NaN is flagged on the device and raised once after the loop,
a model that diverges while it writes scores -inf, benchmarks/gpu.py says in one line that it
measures nothing without CUDA (and its measuring code runs on a tiny CPU model), and
``evaluator.gpus_per_worker`` places Ray actors on shares of a GPU (a runtime that declares one GPU:
Ray places shares of it without a device) or fails in one line naming the field.

On CUDA (skipped here): how often each hot path makes the host wait for the device, counted with
torch's sync debug mode: generation once per call whatever its length, the batched low-rank pass once
per pass, noise genomes never, a fitness evaluation a fixed number of times per individual.
"""

import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import REPO, TINY

from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.data import VOCAB_SIZE, Corpus
from evolm.errors import UsageError
from evolm.evaluators.ray_actor import EvaluationActor
from evolm.evaluators.ray_cluster import actor_count, check_gpus_per_worker
from evolm.fitness import Fitness, mean_log_likelihood
from evolm.genome import LowRankGenome, ParamSpace, SeedGenome
from evolm.models import GPT, GPTConfig, LSTMConfig, LSTMLanguageModel
from evolm.models.base import LanguageModel, NonFiniteLogits, sample_next, to_device
from evolm.population import population_log_likelihood

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY_OVERRIDES = [tuple(TINY[i + 1].split("=", 1)) for i, flag in enumerate(TINY) if flag == "--set"]


def gpt(context=16):
    torch.manual_seed(0)
    return GPT(GPTConfig(context=context, width=32, layers=2, heads=4, ff=64)).eval()


def lstm():
    torch.manual_seed(0)
    return LSTMLanguageModel(LSTMConfig(width=32, layers=2)).eval()


# --- sampling: the same tokens as multinomial, NaN told once -----------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_a_token_is_the_one_multinomial_draws_from_the_same_generator(temperature):
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    logits_source = torch.Generator().manual_seed(1)
    for _ in range(50):
        logits = 3 * torch.randn(6, VOCAB_SIZE, generator=logits_source)
        probs = torch.softmax(logits / temperature, dim=-1)
        assert torch.equal(sample_next(logits, temperature, ours), torch.multinomial(probs, 1, generator=theirs))
    assert torch.equal(ours.get_state(), theirs.get_state())  # the same draws consumed: later text is unchanged too


@pytest.mark.parametrize("make_model", [gpt, lstm])
def test_generation_is_per_token_multinomial_with_the_host_generator(make_model):
    """Past the GPT's context too (its cache is rebuilt): the loop's tokens are per-token host sampling's."""
    model = make_model()
    prompt = torch.randint(0, VOCAB_SIZE, (3, 5), generator=torch.Generator().manual_seed(2))
    tokens = model.generate(prompt, 30, temperature=0.8, generator=torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    logits, state = model.prefill(prompt)
    expected = []
    for index in range(30):
        token = torch.multinomial(torch.softmax(logits.float() / 0.8, dim=-1), 1, generator=generator)
        expected.append(token)
        if index < 29:
            logits, state = model.step(token, state)
    assert torch.equal(tokens, torch.cat(expected, dim=1))


class DivergesWhileWriting(LanguageModel):
    """A real model written for the test: finite logits on its prompt, NaN from the ``after``-th step on."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after
        self.steps = 0
        self.head = torch.nn.Embedding(VOCAB_SIZE, VOCAB_SIZE)

    def forward(self, tokens):
        return self.head(tokens)

    def prefill(self, prompt):
        self.steps = 0
        return self.head(prompt[:, -1]), None

    def step(self, tokens, state):
        self.steps += 1
        logits = self.head(tokens[:, -1])
        return (logits * math.nan if self.steps >= self.after else logits), state


def test_nan_is_flagged_on_the_device_and_generation_raises_once_after_the_loop():
    logits = torch.zeros(2, VOCAB_SIZE)
    logits[1, 3] = math.nan
    flag = torch.zeros((), dtype=torch.bool)
    sample_next(logits, 1.0, torch.Generator().manual_seed(0), flag)  # a loop's call: no raise, the flag is set
    assert bool(flag)
    with pytest.raises(NonFiniteLogits):  # a single call reads it at once
        sample_next(logits, 1.0, torch.Generator().manual_seed(0))
    assert issubclass(NonFiniteLogits, RuntimeError)  # callers that caught sampling's RuntimeError still do

    model = DivergesWhileWriting(after=3)
    prompt = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(NonFiniteLogits):
        model.generate(prompt, 10, 1.0, torch.Generator().manual_seed(0))
    assert model.steps == 9  # the loop ran to its end: nothing was read from the device per token
    assert model.generate(prompt, 10, 0.0).shape == (2, 10)  # greedy decoding never raises (as before)


def test_a_model_that_diverges_while_it_writes_scores_minus_infinity():
    """Its logits on the prompts are finite, so the old check (a forward on the prompts) re-raised."""
    config = build_config(overrides=[*TINY_OVERRIDES, ("fitness.terms", "self=1,diversity=1")])
    model = DivergesWhileWriting(after=5)
    fitness = Fitness(config, Corpus.load(None, context=32), "cpu", model)
    with pytest.warns(RuntimeWarning, match="-inf"):
        assert fitness(model, fitness.context(0)) == (-math.inf,)


def test_a_host_tensor_goes_to_the_cpu_as_itself():
    tensor = torch.arange(4)
    assert to_device(tensor, "cpu") is tensor


# --- benchmarks/gpu.py -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script measures, for minutes")
def test_the_gpu_benchmark_says_in_one_line_that_it_measures_nothing_on_a_cpu():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py")], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no CUDA device here: benchmarks/gpu.py measures nothing on CPU\n"


def test_the_gpu_benchmarks_measuring_code_runs_on_a_tiny_cpu_model(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu

    assert gpu.parameter_count(gpu.MODEL) >= 100_000_000  # the model the script measures on a GPU
    args = gpu.parse(["--repeats", "1", "--population", "4", "--chunks", "2", "--prompts", "2", "--new-tokens", "3"])
    args.plain_rows, args.plain_generation_rows = (4, 8), (4,)
    tiny = [("model.width", 16), ("model.layers", 1), ("model.heads", 2), ("model.ff", 32), ("model.context", 16)]
    result = gpu.measure(tiny, "cpu", args)
    scoring, generation = result["scoring"], result["generation"]
    assert scoring["plain_rows"] in (4, 8) and scoring["lowrank_batched_chunk"] == 2
    assert set(scoring["methods"]) == {"plain 4", "plain 8", "seed", "lowrank 1", "lowrank 2"}
    assert generation["population_rows"] == 8 and set(generation["plain_by_rows"]) == {4, 8}
    for part in (scoring, generation):
        for key in ("seed_ratio", "lowrank_ratio", "lowrank_in_place_ratio"):
            assert part[key] > 0 and math.isfinite(part[key])
        assert part["lowrank_ratio"] >= part["lowrank_in_place_ratio"]


# --- GPUs for Ray actors -----------------------------------------------------------------------------


def test_gpus_per_worker_that_ray_cannot_place_is_one_line():
    for fine in (0.0, 0.25, 0.5, 1.0, 2.0):
        assert check_gpus_per_worker(fine) == fine
    for bad, words in ((-1.0, "0 or positive"), (math.nan, "0 or positive"), (1.5, "whole"), (1e-5, "0.0001")):
        with pytest.raises(UsageError) as caught:
            check_gpus_per_worker(bad)
        message = str(caught.value)
        assert "\n" not in message and "evaluator.gpus_per_worker" in message and words in message, message


def test_gpus_asked_of_a_cluster_without_gpus_is_one_line(ray_runtime):
    for workers in (2, 0):  # a count, or as many as fit
        with pytest.raises(UsageError) as caught:
            actor_count(workers, 1, 0.5)
        message = str(caught.value)
        assert "\n" not in message and "evaluator.gpus_per_worker" in message and "no GPU" in message, message


def test_an_actor_builds_its_worker_on_the_device_it_is_given():
    config = build_config(overrides=TINY_OVERRIDES)
    threads = torch.get_num_threads()  # an actor sets its process's torch threads: this process's, here
    try:
        actor = EvaluationActor(config, 1, "cuda", worker_from_config)  # the class itself, in this process
        on_cpu = EvaluationActor(config, 1, "cpu", worker_from_config)
    finally:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        assert actor.worker.device.type == "cuda" and next(actor.worker.model.parameters()).is_cuda
    else:
        assert actor.error is not None and actor.error[0] == "usage" and "'cuda'" in actor.error[1]
    assert on_cpu.worker.device.type == "cpu" and config.device == "cpu"  # the actor changed a copy


PLACEMENT = r"""
import json, ray
from evolm.assembly import worker_from_config
from evolm.config import build_config
from evolm.errors import UsageError
from evolm.evaluators.ray_actor import EvaluationActor
from evolm.evaluators import ray_cluster

ray_cluster.start_local_runtime(num_cpus=3, num_gpus=1)  # a declared GPU: Ray places shares of it without one
out = {"auto": ray_cluster.actor_count(0, 1, 0.5), "capacity_0.4": ray_cluster.gpu_actor_capacity(0.4)}
try:
    ray_cluster.actor_count(3, 1, 0.5)
except UsageError as error:
    out["three"] = str(error)
config = build_config(overrides=OVERRIDES)
remote = ray.remote(EvaluationActor)
options = ray_cluster.actor_options(1, 0.5)
actors = [remote.options(**options).remote(config, 1, "cpu", worker_from_config) for _ in range(3)]  # kept: alive
refs = [actor.ready.remote() for actor in actors]
ready, waiting = ray.wait(refs, num_returns=2, timeout=120)
out["ready"] = [ray.get(ref) for ref in ready]
out["third_started"] = bool(ray.wait(waiting, timeout=3)[0])
ray_cluster.stop_local_runtime()
print(json.dumps(out))
"""


@pytest.mark.slow  # a Ray runtime of its own and two actor processes: about 20 s on 2 cores
def test_fractional_gpus_put_two_actors_on_one_gpu_and_no_third(tmp_path):
    """Ray's own placement, on a runtime of its own (3 CPUs, one declared GPU): two actors of 0.5 share
    GPU 0, a third waits for a GPU share (CPUs are free), and the counts say so before any actor starts."""
    script = PLACEMENT.replace("OVERRIDES", repr(TINY_OVERRIDES))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["auto"] == 2 and out["capacity_0.4"] == 2  # a share of a GPU never spans two: 2.5 rounds down
    assert "\n" not in out["three"] and "evaluator.gpus_per_worker" in out["three"] and "hold 2" in out["three"]
    assert [info["gpu_ids"] for info in out["ready"]] == [["0"], ["0"]]
    assert all(info["device"] == "cpu" and "checksum" in info for info in out["ready"])
    assert len({info["pid"] for info in out["ready"]}) == 2 and not out["third_started"]


# --- on CUDA: how often the host waits -----------------------------------------------------------------


def host_waits(function) -> int:
    """How many times ``function`` makes the host wait for the GPU (torch's sync debug mode warns each time)."""
    function()  # warm-up: lazy initialisation, pinned-memory pools, kernels
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@CUDA
@pytest.mark.parametrize("make_model", [gpt, lstm])
def test_generation_on_cuda_reads_the_device_once_per_call_whatever_its_length(make_model):
    model = make_model().cuda()
    prompt = torch.randint(0, VOCAB_SIZE, (4, 5), device="cuda")

    def write(new_tokens, temperature=1.0):
        return lambda: model.generate(prompt, new_tokens, temperature, torch.Generator().manual_seed(1))

    assert host_waits(write(8)) == host_waits(write(40)) == 1  # the NaN flag, after the loop
    assert host_waits(write(40, temperature=0.0)) == 0
    first, again = write(40)(), write(40)()
    assert first.is_cuda and torch.equal(first, again)


@CUDA
def test_sampling_with_a_host_generator_on_cuda_never_waits_and_draws_the_host_noise():
    logits = torch.randn(4, VOCAB_SIZE, device="cuda")
    tokens = sample_next(logits, 1.0, torch.Generator().manual_seed(5))
    noise = torch.empty(4, VOCAB_SIZE).exponential_(generator=torch.Generator().manual_seed(5)).cuda()
    assert torch.equal(tokens, (torch.softmax(logits, dim=-1) / noise).argmax(dim=-1, keepdim=True))
    flag = torch.zeros((), dtype=torch.bool, device="cuda")
    assert host_waits(lambda: sample_next(logits, 1.0, torch.Generator().manual_seed(5), flag)) == 0


@CUDA
def test_the_batched_lowrank_pass_on_cuda_reads_the_device_once_per_pass():
    """Masked entries give tensors layouts of their own: still one read (the scores), not one per tensor."""
    model = gpt().cuda()
    genome = LowRankGenome(ParamSpace(model), rank=2)
    batch = Corpus.load(None, context=16).sample_batch(4, torch.Generator().manual_seed(0)).to("cuda")
    genes = [[(11, 0.05)], [(11, -0.05)], [(5, 0.1), (6, -0.02, 0b1011)], [(7, 0.03, 0b0110)]]
    assert host_waits(lambda: population_log_likelihood(model, batch, genome, genes)) == 1
    for entry, value in zip(genes, population_log_likelihood(model, batch, genome, genes)):
        genome.apply(model, entry)
        assert value == pytest.approx(mean_log_likelihood(model, batch), abs=1e-4)
        genome.undo(model, entry)


@CUDA
@pytest.mark.parametrize("genome_class", [SeedGenome, LowRankGenome])
@pytest.mark.parametrize("cache_bytes", [64 << 20, 0])  # cached noise, and chunk by chunk
def test_noise_genomes_on_cuda_apply_and_undo_without_waiting(genome_class, cache_bytes):
    model = gpt().cuda()
    genome = genome_class(ParamSpace(model), cache_bytes=cache_bytes)
    genes = [(3, 0.1), (4, -0.05, 0b101)]

    def apply_and_undo():
        genome.apply(model, genes)
        genome.undo(model, genes)

    assert host_waits(apply_and_undo) == 0


@CUDA
def test_a_fitness_evaluation_on_cuda_reads_the_device_a_fixed_number_of_times_per_individual():
    waits = {}
    for new_tokens in (8, 24):
        config = build_config(
            overrides=[
                *TINY_OVERRIDES,
                ("device", "cuda"),
                ("fitness.terms", "likelihood=1,self=1,diversity=1"),
                ("fitness.generate_tokens", new_tokens),
            ]
        )
        worker = worker_from_config(config)
        genes = [[(1, 0.01)], [(1, -0.01)], [(2, 0.01)]]
        waits[new_tokens] = host_waits(lambda worker=worker, genes=genes: worker.evaluate(genes, 0))
    # Per individual: the likelihood, the NaN flag, the self-score, the continuations for diversity.
    assert waits[8] == waits[24] <= 4 * 3
