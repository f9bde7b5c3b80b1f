import pytest
import torch

from evolm.data import ByteTokenizer, Corpus, embedded_corpus_text, load_corpus_text
from evolm.errors import UsageError


def test_tokenizer_round_trips_arbitrary_unicode():
    tokenizer = ByteTokenizer()
    texts = ["", "plain ascii", "héllo wörld", "日本語のテキスト", "emoji 🧬🔥 mix", "\x00\n\t\u200b", "Ωμέγα ∑ ∫ 𝔘𝔫𝔦"]
    for text in texts:
        tokens = tokenizer.encode(text)
        assert tokens.dtype == torch.long
        assert all(0 <= t < 256 for t in tokens.tolist())
        assert tokenizer.decode(tokens) == text


def test_embedded_corpus_ships_with_python():
    text = embedded_corpus_text()
    assert len(text) > 400_000
    assert text == embedded_corpus_text()  # fixed order


def test_split_is_deterministic_and_disjoint():
    first = Corpus.load(None, context=64)
    second = Corpus.load(None, context=64)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    total = len(first.train) + len(first.val)
    assert abs(len(first.val) - 0.1 * total) <= 1


def test_batches_follow_the_generator_and_shift_targets():
    corpus = Corpus.load(None, context=16)
    a = corpus.sample_batch(4, torch.Generator().manual_seed(3))
    b = corpus.sample_batch(4, torch.Generator().manual_seed(3))
    c = corpus.sample_batch(4, torch.Generator().manual_seed(4))
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert a.inputs.shape == (4, 16) and a.targets.shape == (4, 16)
    assert torch.equal(a.inputs[:, 1:], a.targets[:, :-1])
    val = corpus.validation_batch(8)
    assert torch.equal(val.inputs, corpus.validation_batch(8).inputs)


def test_text_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 50, encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta " * 50, encoding="utf-8")
    assert load_corpus_text(tmp_path / "a.txt") == "alpha " * 50
    folder_text = load_corpus_text(tmp_path)
    assert "alpha" in folder_text and "beta" in folder_text


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "empty.txt").write_text("") and p / "empty.txt" or p / "empty.txt", "is empty"),
        (lambda p: (p / "bin.txt").write_bytes(b"\xff\xfe\x00abc") and p / "bin.txt" or p / "bin.txt", "not UTF-8"),
        (lambda p: (p / "emptydir").mkdir() or p / "emptydir", "no .txt files"),
    ],
)
def test_bad_data_paths_name_the_problem(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(UsageError, match=message):
        load_corpus_text(path)


def test_corpus_shorter_than_a_window_is_refused():
    with pytest.raises(UsageError, match="too short"):
        Corpus(ByteTokenizer().encode("short text"), context=64)
