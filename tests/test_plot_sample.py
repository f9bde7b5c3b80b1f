"""``plot_run`` and ``sample_text`` on real run folders: a PNG, text, and one clear line for every bad folder."""

import json
import pickle

import pytest
import tomli_w
import torch
from safetensors.torch import save_file

from evolm.config import build_config
from evolm.errors import UsageError
from evolm.models import build_model
from evolm.plot import plot_run, read_metrics
from evolm.sampling import load_run_model, sample_text
from evolm.textstats import printable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def write_metrics(run_dir, rows, tail=""):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)


def synthetic_rows(generations=12, diversity=True):
    rows = []
    for g in range(generations):
        row = {
            "generation": g,
            "wall_seconds": 0.1 * g,
            "best_fitness": -5.5 + 0.1 * g,
            "mean_fitness": -5.7 + 0.1 * g,
            "std_fitness": 0.05,
            "val_loss": 5.6 - 0.09 * g,
            "evaluator_bytes_sent": 100,
        }
        if diversity:
            row.update(distinct_2=0.3 + 0.01 * g, self_score=-4.0 + 0.05 * g)
        rows.append(row)
    rows[3]["best_fitness"] = -1e308  # how the engine writes -inf
    rows[4]["val_loss"] = None  # and NaN
    return rows


# ------------------------------------------------------------------ plot


@pytest.mark.parametrize("diversity", [True, False])
def test_plot_writes_a_png(tmp_path, diversity):
    run_dir = tmp_path / "run"
    write_metrics(run_dir, synthetic_rows(diversity=diversity), tail='{"generation": 12, "best_fi')  # killed mid-line
    path = plot_run(run_dir)
    assert path == run_dir / "fitness.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not list(run_dir.glob("*.tmp"))
    assert len(read_metrics(run_dir)) == 12


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.write_text("x"), "is a file"),
        (lambda d: d.mkdir(), "metrics.jsonl is missing"),
        (lambda d: write_metrics(d, []), "holds no generations"),
        (
            lambda d: write_metrics(d, [], tail='{"generation": 0}\nnot json\n{"generation": 2}\n'),
            "line 2 is not valid JSON",
        ),
        (lambda d: write_metrics(d, [], tail="[1, 2]\n"), "line 1 is not a JSON object"),
    ],
)
def test_plot_refuses_a_bad_run_folder(tmp_path, setup, message):
    run_dir = tmp_path / "run"
    setup(run_dir)
    with pytest.raises(UsageError, match=message) as error:
        plot_run(run_dir)
    assert str(run_dir) in one_line(error)


# ------------------------------------------------------------------ sample

TINY_MODEL = [
    ("model.width", "16"),
    ("model.layers", "1"),
    ("model.heads", "2"),
    ("model.ff", "32"),
    ("model.context", "16"),
]


def drop_none(value):
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    return value


def make_run(run_dir, model="gpt", seed=3):
    """A run folder as the engine leaves it: config.toml (None values dropped) and model.safetensors."""
    config = build_config(overrides=[*TINY_MODEL, ("model.name", model), ("seed", str(seed))])
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps(drop_none(config.to_dict())))
    model_ = build_model(config.model, config.seed)
    with torch.no_grad():
        for parameter in model_.parameters():  # trained weights differ from a fresh build of the config
            parameter.add_(0.01)
    save_file({k: v.contiguous() for k, v in model_.state_dict().items()}, str(run_dir / "model.safetensors"))
    return run_dir, model_


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "gpt")


def test_load_run_model_restores_the_saved_weights(gpt_run):
    run_dir, saved = gpt_run
    model = load_run_model(run_dir)
    assert not model.training
    for (name, a), (_, b) in zip(model.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(a, b), name


def test_sample_text_is_deterministic_text(gpt_run):
    run_dir, _ = gpt_run
    text = sample_text(run_dir, tokens=60, seed=1)
    assert isinstance(text, str) and text
    assert text == sample_text(run_dir, tokens=60, seed=1)
    assert text != sample_text(run_dir, tokens=60, seed=2)
    # A prompt longer than the model's 16-token context, greedy decoding, and zero tokens all work.
    assert sample_text(run_dir, prompt="The quick brown fox jumps over the lazy dog. " * 2, tokens=40, temperature=0)
    assert sample_text(run_dir, prompt="x", tokens=0) == ""


def test_sample_text_from_an_lstm_run(tmp_path):
    run_dir, _ = make_run(tmp_path / "lstm", model="lstm")
    assert sample_text(run_dir, prompt="def ", tokens=30)


def _corrupt(run_dir, what, tmp_path):
    if what == "no-folder":
        return run_dir.parent / "nowhere"
    if what == "file":
        path = run_dir.parent / "a-file"
        path.write_text("x")
        return path
    if what == "no-config":
        (run_dir / "config.toml").unlink()
    elif what == "bad-toml":
        (run_dir / "config.toml").write_text("model = [unclosed")
    elif what == "bad-config-value":
        (run_dir / "config.toml").write_text('[model]\nwidth = "wide"\n')
    elif what == "no-weights":
        (run_dir / "model.safetensors").unlink()
    elif what == "garbage-weights":
        (run_dir / "model.safetensors").write_bytes(b"\x00" * 3)
    elif what == "pickle-weights":
        (run_dir / "model.safetensors").write_bytes(pickle.dumps({"head.weight": Evil(tmp_path / "marker")}))
    elif what in ("missing-key", "extra-key", "wrong-shape"):
        weights = {
            k: v.contiguous() for k, v in build_model(build_config(overrides=TINY_MODEL).model, 0).state_dict().items()
        }
        if what == "missing-key":
            weights.pop("head.weight")
        elif what == "extra-key":
            weights["surprise"] = torch.zeros(1)
        else:
            weights["head.weight"] = torch.zeros(3, 3)
        save_file(weights, str(run_dir / "model.safetensors"))
    return run_dir


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.mark.parametrize(
    "what, message",
    [
        ("no-folder", "does not exist"),
        ("file", "is a file"),
        ("no-config", "has no config.toml"),
        ("bad-toml", "config.toml is not valid TOML"),
        ("bad-config-value", "model.width must be an integer"),
        ("no-weights", "has no model.safetensors"),
        ("garbage-weights", "model.safetensors is not a valid safetensors file"),
        ("pickle-weights", "model.safetensors is not a valid safetensors file"),
        ("missing-key", "missing head.weight"),
        ("extra-key", "unexpected surprise"),
        ("wrong-shape", "head.weight has shape (3, 3)"),
    ],
)
def test_sample_refuses_a_bad_run_folder(tmp_path, what, message):
    run_dir, _ = make_run(tmp_path / "run")
    target = _corrupt(run_dir, what, tmp_path)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        sample_text(target, tokens=5)
    assert str(target) in one_line(error)
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tokens": -1}, "--tokens"),
        ({"temperature": -0.5}, "--temperature"),
        ({"temperature": float("nan")}, "--temperature"),
    ],
)
def test_sample_refuses_bad_arguments(gpt_run, kwargs, message):
    with pytest.raises(UsageError, match=message) as error:
        sample_text(gpt_run[0], **kwargs)
    one_line(error)


def test_printable_neutralises_control_characters():
    assert printable("ok\tline\n\x1b[2Jé\x00\u200b") == "ok\tline\n\ufffd[2Jé\ufffd\ufffd"


def test_tensorboard_logging_writes_the_run_metrics(tmp_path, cli, tiny_args):
    """--tensorboard writes every numeric metric as a scalar per generation; without the package, one line and exit 2."""
    out = tmp_path / "tb"
    result = cli("run", *tiny_args, "--generations", "3", "--tensorboard", "--out", str(out), "--quiet")
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        assert result.returncode == 2 and "tensorboard package is not installed" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
        return
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    val_loss = [event.value for event in events.Scalars("val_loss")]
    # Validation runs on the first generation, every report_every-th and the last: 0 and 2 of three.
    assert [event.step for event in events.Scalars("val_loss")] == [0, 2]
    assert [event.step for event in events.Scalars("best_fitness")] == [0, 1, 2]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert val_loss == pytest.approx([line["val_loss"] for line in lines if "val_loss" in line], rel=1e-6)


@pytest.mark.parametrize("strategy", ["es", "ga"])
def test_a_run_ends_with_the_sample_of_its_saved_weights(tmp_path, strategy):
    """The closing sample comes from the driver's worker with the final genes applied (no second model
    is built from model.safetensors), and it is exactly what ``evolm sample`` writes from the folder."""
    from evolm.engine import run

    config = build_config(
        overrides=[
            ("strategy.name", strategy),
            ("model.width", 32),
            ("model.layers", 1),
            ("model.heads", 2),
            ("model.ff", 64),
            ("model.context", 32),
            ("data.batch_size", 4),
            ("data.val_sequences", 4),
            ("strategy.population_size", 8),
            ("generations", 3),
            ("seed", 3),
        ]
    )
    lines = []
    run(config, tmp_path / "run", progress=False, log=lines.append)
    logged = [line for line in lines if line.startswith("evolm: sample (200 bytes")]
    assert len(logged) == 1
    expected = printable(sample_text(tmp_path / "run", tokens=200, temperature=0.8, seed=3))
    assert logged[0].split("\n", 1)[1] == expected
