"""Checkpoints: exact round trips, atomic writes that survive a kill, and loading that refuses anything unsafe."""

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from evolm import checkpoint as ckpt
from evolm.checkpoint import (
    flatten_optimizer_state,
    load_checkpoint,
    numpy_rng_from_json,
    numpy_rng_to_json,
    pack_tree,
    python_rng_from_json,
    python_rng_to_json,
    save_checkpoint,
    store,
    torch_rng_from_json,
    torch_rng_to_json,
    truncate_metrics,
    unflatten_optimizer_state,
    unpack_tree,
)
from evolm.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def payload(generation: int) -> dict:
    return {
        "tensors": {"model.weight": torch.full((3, 4), float(generation)), "model.bias": torch.arange(4.0)},
        "state": {"generation": generation, "best_fitness": -float("inf"), "genes": [[12345, 0.02], [678, -0.02]]},
        "metrics_lines": generation + 1,
    }


def assert_payload(loaded: dict, generation: int) -> None:
    expected = payload(generation)
    assert loaded["metrics_lines"] == expected["metrics_lines"]
    assert loaded["state"] == expected["state"]
    assert set(loaded["tensors"]) == set(expected["tensors"])
    for name, tensor in expected["tensors"].items():
        assert torch.equal(loaded["tensors"][name], tensor), name


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def rewrite_manifest(folder: Path, **replacements: bytes) -> None:
    """Replace data files and record their true hashes: a crafted checkpoint that passes the integrity check."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, data in replacements.items():
        (folder / name).write_bytes(data)
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------ round trips


def test_round_trip_and_replacement(tmp_path):
    save_checkpoint(tmp_path, payload(0))
    assert_payload(load_checkpoint(tmp_path), 0)
    folder = save_checkpoint(tmp_path, payload(1))
    assert folder == tmp_path / "checkpoint"
    assert_payload(load_checkpoint(tmp_path), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no old or temporary folders left
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "state.json", "tensors.safetensors"]


def test_tied_and_strided_tensors_are_saved(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    save_checkpoint(tmp_path, {"tensors": {"a": base, "tied": base, "t": base.t()}, "state": {}, "metrics_lines": 0})
    tensors = load_checkpoint(tmp_path)["tensors"]
    assert (
        torch.equal(tensors["a"], base) and torch.equal(tensors["tied"], base) and torch.equal(tensors["t"], base.t())
    )


def test_unserialisable_state_changes_nothing(tmp_path):
    save_checkpoint(tmp_path, payload(0))
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, {"tensors": {}, "state": {"bad": object()}, "metrics_lines": 1})
    assert_payload(load_checkpoint(tmp_path), 0)


def test_optimizer_state_round_trip_continues_identically(tmp_path):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        return model, torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.8, 0.95), weight_decay=0.01)

    def steps(model, optimizer, start, count):
        for step in range(start, start + count):
            for index, parameter in enumerate(model.parameters()):
                parameter.grad = torch.sin(torch.arange(parameter.numel(), dtype=torch.float32) + step + index).view_as(
                    parameter
                )
            optimizer.step()

    model, optimizer = make()
    steps(model, optimizer, 0, 3)
    tensors, skeleton = flatten_optimizer_state(optimizer.state_dict())
    assert any(name.endswith("exp_avg_sq") for name in tensors)  # Adam moments travel as tensors
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, {"tensors": {**weights, **tensors}, "state": {"optimizer": skeleton}, "metrics_lines": 3})
    steps(model, optimizer, 3, 4)

    loaded = load_checkpoint(tmp_path)
    resumed, resumed_optimizer = make()
    resumed.load_state_dict({k[len("model.") :]: v for k, v in loaded["tensors"].items() if k.startswith("model.")})
    state = unflatten_optimizer_state(loaded["state"]["optimizer"], loaded["tensors"])
    assert state["param_groups"][0]["betas"] == (0.8, 0.95)
    resumed_optimizer.load_state_dict(state)
    steps(resumed, resumed_optimizer, 3, 4)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_rng_states_round_trip_reproduce_the_next_draws(tmp_path):
    torch_gen = torch.Generator().manual_seed(7)
    torch.randn(10, generator=torch_gen)
    pcg = np.random.default_rng(7)
    pcg.normal(size=5)
    mt = np.random.Generator(np.random.MT19937(3))
    mt.integers(0, 10, 5)
    py = random.Random(7)
    py.random(), py.gauss(0, 1)  # gauss leaves a cached value: it must survive too
    state = {
        "torch": torch_rng_to_json(torch_gen),
        "numpy": numpy_rng_to_json(pcg),
        "mt": numpy_rng_to_json(mt),
        "python": python_rng_to_json(py),
    }
    save_checkpoint(tmp_path, {"tensors": {}, "state": state, "metrics_lines": 0})
    expected = (
        torch.randn(20, generator=torch_gen),
        pcg.normal(size=20),
        mt.integers(0, 2**40, 20),
        [py.gauss(0, 1) for _ in range(5)] + [py.random()],
    )

    loaded = load_checkpoint(tmp_path)["state"]
    got = (
        torch.randn(20, generator=torch_rng_from_json(loaded["torch"])),
        numpy_rng_from_json(loaded["numpy"]).normal(size=20),
        numpy_rng_from_json(loaded["mt"]).integers(0, 2**40, 20),
    )
    restored_py = python_rng_from_json(loaded["python"])
    got += ([restored_py.gauss(0, 1) for _ in range(5)] + [restored_py.random()],)
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and np.array_equal(got[2], expected[2])
    assert got[3] == expected[3]
    # Restoring into existing generators (what a strategy holding one would do) works the same way.
    into = np.random.default_rng(0)
    assert numpy_rng_from_json(loaded["numpy"], into) is into


def test_legacy_numpy_state_round_trip():
    legacy = np.random.RandomState(5)
    legacy.randn()  # leaves a cached gauss value
    restored = numpy_rng_from_json(json.loads(json.dumps(numpy_rng_to_json(legacy))))
    assert isinstance(restored, np.random.RandomState) and np.array_equal(restored.randn(4), legacy.randn(4))


def test_checkpoint_holds_no_global_rng_state():
    """Resuming must not set the caller's random / numpy / torch state, so there is nothing to save or restore."""
    assert not hasattr(ckpt, "global_rng_states") and not hasattr(ckpt, "restore_global_rng_states")


# ------------------------------------------------------------------ streamed safetensors


def every_kind_of_tensor() -> dict:
    base = torch.arange(12.0).reshape(3, 4)
    return {
        "f32": base,
        "tied": base,
        "strided": base.t(),
        "f64": torch.linspace(-1, 1, 5, dtype=torch.float64),
        "bf16": torch.linspace(-2, 2, 7).to(torch.bfloat16),
        "f16": torch.linspace(0, 1, 3).to(torch.float16),
        "bool": torch.tensor([True, False, True]),
        "i8": torch.arange(-3, 4, dtype=torch.int8),
        "i64": torch.tensor(2**40 + 3),
        "u8": torch.arange(5, dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
    }


def test_streamed_safetensors_read_back_with_safetensors_itself(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load, load_file

    tensors = every_kind_of_tensor()
    path = tmp_path / "t.safetensors"
    size, sha256 = ckpt.write_safetensors(path, tensors, {"format": "x"})
    data = path.read_bytes()
    assert size == len(data) and sha256 == hashlib.sha256(data).hexdigest()
    header_length = int.from_bytes(data[:8], "little")
    assert header_length % 8 == 0  # safetensors' alignment: every tensor starts at a multiple of its element size
    header = json.loads(data[8 : 8 + header_length])
    for name, entry in header.items():
        if name != "__metadata__":
            assert entry["data_offsets"][0] % tensors[name].element_size() == 0, name
    for loaded in (load_file(path), load(data)):
        assert set(loaded) == set(tensors)
        for name, tensor in tensors.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    with safe_open(path, "pt") as handle:
        assert handle.metadata() == {"format": "x"}
        assert torch.equal(handle.get_tensor("bf16"), tensors["bf16"])


def test_checkpoint_round_trips_every_dtype(tmp_path):
    tensors = every_kind_of_tensor()
    save_checkpoint(tmp_path, {"tensors": tensors, "state": {}, "metrics_lines": 0})
    loaded = load_checkpoint(tmp_path)["tensors"]
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_unsavable_dtype_changes_nothing(tmp_path):
    save_checkpoint(tmp_path, payload(0))
    with pytest.raises(TypeError, match="safetensors cannot hold"):
        save_checkpoint(
            tmp_path, {"tensors": {"c": torch.zeros(2, dtype=torch.complex128)}, "state": {}, "metrics_lines": 1}
        )
    assert_payload(load_checkpoint(tmp_path), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


MEMORY_PROBE = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from evolm.checkpoint import save_checkpoint

    def peak_rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    weights = {f"w{i}": torch.full((1024, 1024), float(i)) for i in range(64)}  # 256 MiB
    moments = {f"m{i}": torch.zeros(1024, 1024) for i in range(64)}  # 256 MiB more, like Adam's
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # restart the peak from here
    before = peak_rss()
    save_checkpoint(Path(sys.argv[1]), {"tensors": {**weights, **moments}, "state": {}, "metrics_lines": 0})
    print(peak_rss() - before)
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to reset the peak RSS")
def test_saving_a_checkpoint_adds_no_copy_of_the_tensors(tmp_path):
    """512 MiB of tensors: safetensors' own save would add at least that much again (the bytes it builds)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    added = int(result.stdout.split()[-1])
    assert added < 64 * 2**20, f"saving added {added / 2**20:.0f} MiB to the peak RSS"
    assert (tmp_path / "checkpoint" / "tensors.safetensors").stat().st_size > 512 * 2**20


def test_pack_tree_round_trip():
    tree = {
        "a": (1, 2.5, None),
        3: [np.arange(4, dtype=np.int64), torch.ones(2)],
        ("k", 1): {"__tensor__": "not a tag"},
    }
    tensors, skeleton = pack_tree(tree, "x")
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = unpack_tree(json.loads(json.dumps(skeleton)), tensors)
    assert back["a"] == (1, 2.5, None)
    assert np.array_equal(back[3][0], np.arange(4)) and torch.equal(back[3][1], torch.ones(2))
    assert back[("k", 1)] == {"__tensor__": "not a tag"}
    with pytest.raises(UsageError, match="does not hold"):
        unpack_tree(skeleton, {})


def test_individuals_round_trip_with_their_fitness(tmp_path):
    from evolm.individuals import make_individual, make_vector_individual

    listed = make_individual([(123, 0.02), (456, -0.01, 2**70 + 5)], 1)
    listed.fitness.values = (-4.5,)
    listed.parent_fitness = float("-inf")  # strategies hang bookkeeping on individuals: it must survive
    vector = make_vector_individual(np.linspace(-1, 1, 7), 2)
    vector.fitness.values = (-1.0, float("-inf"))
    unscored = make_individual([(7, 0.1)], 1)
    tensors, skeleton = pack_tree(
        {"population": [ckpt.individual_to_tree(i) for i in (listed, vector, unscored)]}, "strategy"
    )
    save_checkpoint(tmp_path, {"tensors": tensors, "state": {"strategy": skeleton}, "metrics_lines": 0})
    loaded = load_checkpoint(tmp_path)
    back = [
        ckpt.individual_from_tree(t) for t in unpack_tree(loaded["state"]["strategy"], loaded["tensors"])["population"]
    ]
    assert type(back[0]) is type(listed) and list(back[0]) == list(listed) and back[0].fitness.values == (-4.5,)
    assert back[0].parent_fitness == float("-inf") and not hasattr(back[1], "parent_fitness")
    assert type(back[1]) is type(vector) and np.array_equal(back[1], vector) and back[1].dtype == np.float32
    assert back[1].fitness.values == (-1.0, float("-inf"))
    assert not back[2].fitness.valid and list(back[2]) == [(7, 0.1)]


# ------------------------------------------------------------------ atomic writes


def test_failed_write_midway_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, payload(0))
    real_write = store._write_file

    def failing_write(path, data):
        if path.name == "state.json":
            path.write_bytes(data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(store, "_write_file", failing_write)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, payload(1))
    assert_payload(load_checkpoint(tmp_path), 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_failed_swap_puts_previous_checkpoint_back(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, payload(0))
    real_rename = store._rename
    calls = []

    def failing_rename(source, target):
        calls.append(target.name)
        if len(calls) == 2:  # checkpoint -> checkpoint.old succeeded; the new folder's rename fails
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(store, "_rename", failing_rename)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, payload(1))
    assert calls[:2] == ["checkpoint.old", "checkpoint"]
    assert_payload(load_checkpoint(tmp_path), 0)
    assert (tmp_path / "checkpoint").is_dir()


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import torch
    from evolm.checkpoint import store as c

    run_dir, stage = Path(sys.argv[1]), sys.argv[2]
    real_write, real_rename = c._write_file, c._rename
    renames = []

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def write(path, data):
        if stage == "write" and path.name == "state.json":
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
            kill()
        real_write(path, data)

    def rename(source, target):
        real_rename(source, target)
        renames.append(target.name)
        if (stage, len(renames)) in (("swap", 1), ("after", 2)):
            kill()

    c._write_file, c._rename = write, rename
    c.save_checkpoint(run_dir, {
        "tensors": {"model.weight": torch.full((3, 4), 1.0), "model.bias": torch.arange(4.0)},
        "state": {"generation": 1, "best_fitness": -float("inf"), "genes": [[12345, 0.02], [678, -0.02]]},
        "metrics_lines": 2,
    })
    """
)


@pytest.mark.parametrize("stage, survivor", [("write", 0), ("swap", 0), ("after", 1)])
def test_save_killed_by_sigkill_leaves_a_loadable_checkpoint(tmp_path, stage, survivor):
    """A real process killed while writing files, between the renames, or before cleanup."""
    save_checkpoint(tmp_path, payload(0))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path), stage], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    names = {p.name for p in tmp_path.iterdir()}
    if stage == "swap":
        assert "checkpoint" not in names and "checkpoint.old" in names  # the worst instant: only the old one
    assert_payload(load_checkpoint(tmp_path), survivor)
    # The next save cleans up whatever the killed one left.
    save_checkpoint(tmp_path, payload(2))
    assert_payload(load_checkpoint(tmp_path), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# ------------------------------------------------------------------ refusing bad checkpoints


def test_tampered_tensor_bytes_are_refused(tmp_path):
    folder = save_checkpoint(tmp_path, payload(0))
    data = bytearray((folder / "tensors.safetensors").read_bytes())
    data[-1] ^= 0x01
    (folder / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(UsageError) as error:
        load_checkpoint(tmp_path)
    assert "tensors.safetensors" in one_line(error) and "SHA-256" in str(error.value)


def test_truncated_state_is_refused(tmp_path):
    folder = save_checkpoint(tmp_path, payload(0))
    data = (folder / "state.json").read_bytes()
    (folder / "state.json").write_bytes(data[:10])
    with pytest.raises(UsageError) as error:
        load_checkpoint(tmp_path)
    assert "state.json" in one_line(error) and "truncated" in str(error.value)


def test_tampered_checkpoint_is_not_replaced_by_an_older_one(tmp_path):
    folder = save_checkpoint(tmp_path, payload(0))
    shutil.copytree(folder, tmp_path / "checkpoint.old")  # a good older checkpoint is present too
    (folder / "manifest.json").write_text("{ not json")
    with pytest.raises(UsageError) as error:
        load_checkpoint(tmp_path)
    assert str(folder / "manifest.json") in one_line(error)
    shutil.rmtree(folder)  # only when `checkpoint` is missing does loading fall back
    assert_payload(load_checkpoint(tmp_path), 0)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "has no checkpoint"),
        (lambda d: d.write_text("x"), "not a folder"),
    ],
)
def test_not_a_checkpoint_folder(tmp_path, setup, message):
    target = tmp_path / "run"
    setup(target)
    with pytest.raises(UsageError, match=message) as error:
        load_checkpoint(target)
    assert str(target) in one_line(error)


class CodeExecution:
    """Unpickling this runs code that creates ``marker``: what an unsafe loader would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def safetensors_header_trick(body: bytes) -> bytes:
    header = json.dumps(
        {
            "w": {"dtype": "PICKLE", "shape": [len(body)], "data_offsets": [0, len(body)]},
            "__metadata__": {"format": "pt"},
        }
    ).encode()
    return len(header).to_bytes(8, "little") + header + body


def torch_save_bytes(obj, path: Path) -> bytes:
    torch.save(obj, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    "attack",
    [
        "pickle-as-tensors",
        "torch-save-as-tensors",
        "pickle-as-state",
        "safetensors-header-trick",
        "extra-pickle-file-in-manifest",
        "stray-pt-file",
    ],
)
def test_crafted_pickle_payload_is_refused_and_never_runs(tmp_path, attack):
    marker = tmp_path / "marker"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(CodeExecution(control)))  # the payload is live: a pickle loader would run it
    assert control.exists()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    folder = save_checkpoint(run_dir, payload(0))
    evil = pickle.dumps({"w": CodeExecution(marker)})
    if attack == "pickle-as-tensors":
        rewrite_manifest(folder, **{"tensors.safetensors": evil})
    elif attack == "torch-save-as-tensors":
        rewrite_manifest(
            folder, **{"tensors.safetensors": torch_save_bytes({"w": CodeExecution(marker)}, tmp_path / "x.pt")}
        )
    elif attack == "pickle-as-state":
        rewrite_manifest(folder, **{"state.json": evil})
    elif attack == "safetensors-header-trick":
        rewrite_manifest(folder, **{"tensors.safetensors": safetensors_header_trick(evil)})
    elif attack == "extra-pickle-file-in-manifest":
        rewrite_manifest(folder, **{"optimizer.pt": evil})
    elif attack == "stray-pt-file":
        for name in ("optimizer.pt", "state.pt", "checkpoint.pt", "state.pkl"):
            (folder / name).write_bytes(evil)
    if attack == "stray-pt-file":
        assert_payload(load_checkpoint(run_dir), 0)  # files the manifest does not name are never opened
    else:
        with pytest.raises(UsageError) as error:
            load_checkpoint(run_dir)
        assert str(folder) in one_line(error)
    assert not marker.exists()


# ------------------------------------------------------------------ metrics


def test_truncate_metrics_cuts_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"generation": g}) + "\n" for g in range(5)) + '{"generation": 5, "va')
    assert truncate_metrics(path, 3) == 3
    assert [json.loads(line)["generation"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert path.read_text().endswith("\n")
    assert truncate_metrics(path, 3) == 0
    with pytest.raises(UsageError, match="has 3 complete lines but the checkpoint covers 4"):
        truncate_metrics(path, 4)
    missing = tmp_path / "none.jsonl"
    assert truncate_metrics(missing, 0) == 0 and missing.read_text() == ""
    with pytest.raises(UsageError, match="missing"):
        truncate_metrics(tmp_path / "other.jsonl", 2)
