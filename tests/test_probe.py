"""The first-use probe of a user's module (evolm.probe): a seed-document LSTM without batch_first is refused,
the same module behind the time_major_io adapter evolves, non-causal modules are refused, probe=False skips it,
and the probe is cheap, leaves the module's mode and the global random state alone."""

import pytest
import torch
from test_api import TINY, Interrupted, TimeMajorLSTM, interrupt_after_checkpoints, quiet
from torch import nn

import evolm.api as api
from evolm.errors import UsageError
from evolm.probe import PROBE_ROWS, PROBE_TOKENS, probe_language_model

TEXT = "the quick brown fox jumps over the lazy dog. " * 400


class SeedLSTM(nn.Module):
    """The seed document's LanguageModel as written: nn.LSTM without batch_first, time-major in and out."""

    def __init__(self, vocab=256, width=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))
        return self.head(output)


class BidirectionalLSTM(nn.Module):
    def __init__(self, vocab=256, width=32):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, width, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * width, vocab)

    def forward(self, tokens):
        output, _ = self.lstm(self.embedding(tokens))
        return self.head(output)


class Attention(nn.Module):
    """One attention layer; without ``causal`` every position sees the whole sequence."""

    def __init__(self, vocab=256, width=32, causal=False):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True)
        self.head = nn.Linear(width, vocab)
        self.causal = causal

    def forward(self, tokens):
        x = self.embedding(tokens)
        length = tokens.shape[1]
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool), 1) if self.causal else None
        output, _ = self.attention(x, x, x, attn_mask=mask, need_weights=False)
        return self.head(x + output)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_seed_style_lstm_is_refused_naming_row_independence_and_the_fix(tmp_path, corpus):
    with pytest.raises(UsageError) as caught:
        api.evolve(SeedLSTM, data=corpus, out=tmp_path / "run", log=quiet, **TINY)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("row independence fails", "batch_first=True", "adapter=evolm.api.time_major_io", "probe=False"):
        assert part in message, message
    assert not (tmp_path / "run").exists()


def test_seed_style_lstm_behind_time_major_io_evolves(tmp_path, corpus):
    summary = api.evolve(SeedLSTM, data=corpus, adapter=api.time_major_io, out=tmp_path / "run", log=quiet, **TINY)
    assert summary["val_loss_final"] < summary["val_loss_initial"] - 0.05, summary


@pytest.mark.parametrize("module", [BidirectionalLSTM, Attention], ids=["bidirectional-lstm", "attention-without-mask"])
def test_non_causal_modules_are_refused(tmp_path, corpus, module):
    with pytest.raises(UsageError, match=r"causality fails .*causal mask.*bidirectional=False.*probe=False"):
        api.evolve(module, data=corpus, out=tmp_path / "run", log=quiet, **TINY)


def test_sound_modules_pass_the_probe():
    torch.manual_seed(0)
    for model in (
        api.AdaptedModel(Attention(causal=True)),
        api.AdaptedModel(SeedLSTM(), api.time_major_io),
        api.AdaptedModel(TimeMajorLSTM(), api.time_major),
    ):
        probe_language_model(model, 256, "cpu")


def test_probe_false_skips_the_check(tmp_path, corpus):
    summary = api.evolve(
        SeedLSTM, data=corpus, out=tmp_path / "run", log=quiet, probe=False, **dict(TINY, generations=2)
    )
    assert summary["generations"] == 2


def test_resume_probes_the_module_again(tmp_path, corpus, monkeypatch):
    settings = dict(TINY, generations=3, checkpoint_every=1)
    with monkeypatch.context() as patch:
        interrupt_after_checkpoints(patch, 1)
        with pytest.raises(Interrupted):
            api.evolve(SeedLSTM, data=corpus, out=tmp_path / "run", log=quiet, probe=False, **settings)
    with pytest.raises(UsageError, match="row independence fails"):
        api.resume(tmp_path / "run", SeedLSTM, log=quiet)
    summary = api.resume(tmp_path / "run", SeedLSTM, log=quiet, probe=False)
    assert summary["generations"] == 3


class Recording(nn.Module):
    """A causal, row-wise module that records the shape of every batch it is given."""

    def __init__(self, vocab=256):
        super().__init__()
        self.embedding = nn.Embedding(vocab, vocab)
        self.shapes = []
        self.modes = []

    def forward(self, tokens):
        self.shapes.append(tuple(tokens.shape))
        self.modes.append(self.training)
        return self.embedding(tokens)


def test_probe_is_small_in_eval_mode_and_leaves_state_alone():
    module = Recording()
    module.train()
    rng = torch.get_rng_state()
    probe_language_model(module, 256, "cpu")
    assert module.shapes == [(PROBE_ROWS, PROBE_TOKENS)] * 3  # three forwards of 3 x 6 tokens, whatever the model
    assert module.modes == [False] * 3 and module.training  # eval for the probe, the caller's mode restored
    assert torch.equal(torch.get_rng_state(), rng)  # inputs from its own seeded generator
    module.shapes.clear()
    probe_language_model(module, 256, "cpu", context=4)
    assert module.shapes == [(PROBE_ROWS, 4)] * 3  # never longer than the model's context


def test_tolerance_ignores_float_noise_but_not_a_leak():
    class Noisy(nn.Module):
        """Causal and row-wise, plus noise of float32 rounding size that differs between calls."""

        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(256, 256)
            self.calls = 0

        def forward(self, tokens):
            self.calls += 1
            logits = self.embedding(tokens) * 10
            return logits * (1 + 2e-7 * self.calls)

    probe_language_model(Noisy(), 256, "cpu")

    class Leaky(Noisy):
        def forward(self, tokens):  # position 0 sees a trace (1e-3) of the last token
            logits = super().forward(tokens)
            leak = torch.zeros_like(logits)
            leak[:, 0] = 1e-3 * logits[:, -1]
            return logits + leak

    with pytest.raises(UsageError, match="causality fails"):
        probe_language_model(Leaky(), 256, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the probe runs on the model's device")
def test_probe_runs_on_the_models_device():
    module = Attention(causal=True).cuda()
    probe_language_model(api.AdaptedModel(module), 256, "cuda")
    with pytest.raises(UsageError, match="causality fails"):
        probe_language_model(api.AdaptedModel(Attention().cuda()), 256, "cuda")
