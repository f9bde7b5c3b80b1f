"""Corpora, the byte-level tokenizer, the train/validation split and seeded batch sampling.

The embedded default corpus is the English reference documentation bundled with every CPython
(``pydoc_data.topics``, about 465 KB), so a run needs no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evolm.errors import UsageError

VOCAB_SIZE = 256


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, lossless for any Unicode text."""

    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    def decode(self, tokens) -> str:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        # Sampled byte sequences can cut a multi-byte character; show it rather than fail.
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def embedded_corpus_text() -> str:
    """CPython's bundled reference documentation, in a fixed (sorted-topic) order."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"data file {path} is not UTF-8 text (byte {error.start} cannot be decoded)") from None
    except OSError as error:
        raise UsageError(f"data file {path} cannot be read: {error.strerror}") from None


def load_corpus_text(path: str | Path | None) -> str:
    """Text of the corpus: the embedded default when ``path`` is None, else a UTF-8 file or a folder of ``.txt`` files."""
    if path is None or str(path) == "":
        return embedded_corpus_text()
    path = Path(path)
    if not path.exists():
        raise UsageError(f"data path {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UsageError(f"data folder {path} holds no .txt files")
        text = "\n\n".join(_read_utf8(p) for p in files)
    else:
        text = _read_utf8(path)
    if not text.strip():
        raise UsageError(f"data path {path} is empty")
    return text


@dataclass
class Batch:
    """Inputs ``tokens[:-1]`` and targets ``tokens[1:]`` of a set of windows, as in the seed Dataset."""

    inputs: torch.Tensor  # (batch, context) long
    targets: torch.Tensor  # (batch, context) long

    def to(self, device) -> Batch:
        return Batch(self.inputs.to(device), self.targets.to(device))

    @property
    def num_tokens(self) -> int:
        return self.inputs.numel()


class Corpus:
    """A tokenized corpus with a deterministic split: the first ``1 - val_fraction`` trains, the rest validates."""

    def __init__(self, tokens: torch.Tensor, context: int, val_fraction: float = 0.1, source: str = "embedded"):
        self.context = context
        self.source = source
        split = int(len(tokens) * (1.0 - val_fraction))
        self.train = tokens[:split]
        self.val = tokens[split:]
        # A window needs context + 1 tokens (inputs and shifted targets).
        for name, part in (("training", self.train), ("validation", self.val)):
            if len(part) < context + 1:
                raise UsageError(
                    f"corpus {source} is too short: its {name} part has {len(part)} tokens, "
                    f"fewer than one context window of {context + 1}"
                )

    @classmethod
    def load(cls, path: str | Path | None, context: int, val_fraction: float = 0.1) -> Corpus:
        text = load_corpus_text(path)
        return cls(ByteTokenizer().encode(text), context, val_fraction, source=str(path) if path else "embedded")

    def _windows(self, part: torch.Tensor, starts: torch.Tensor) -> Batch:
        offsets = torch.arange(self.context + 1)
        windows = part[starts.unsqueeze(1) + offsets]
        return Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())

    def sample_batch(self, batch_size: int, generator: torch.Generator, split: str = "train") -> Batch:
        """Random windows drawn with an explicit generator: the same generator state gives the same batch."""
        part = self.train if split == "train" else self.val
        starts = torch.randint(0, len(part) - self.context, (batch_size,), generator=generator)
        return self._windows(part, starts)

    def validation_batch(self, num_sequences: int) -> Batch:
        """Fixed, evenly spaced validation windows: the same every generation and every run."""
        last_start = len(self.val) - self.context - 1
        count = min(num_sequences, last_start + 1)
        starts = torch.linspace(0, last_start, count).long()
        return self._windows(self.val, starts)
