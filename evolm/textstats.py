"""Text statistics over token rows: distinct-n, repetition rate, diversity, hashed n-gram profiles, novelty.

Pure functions of token ids (a 1-D or 2-D tensor, one list of ints, or a list of sequences): no model,
no randomness. :mod:`evolm.fitness` turns them into the ``diversity`` and ``novelty`` terms and the
per-generation report; the gradient baselines report distinct-2 with them too.

- distinct-n: distinct n-grams over all n-grams (Li et al. 2016, "A Diversity-Promoting Objective
  Function for Neural Conversation Models").
- repetition rate: seq-rep-n (Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training").
- novelty: mean cosine distance between hashed n-gram profiles, the behaviour distance of novelty
  search (Lehman & Stanley 2011, "Abandoning Objectives").
"""

from __future__ import annotations

import unicodedata

import numpy as np
import torch

DIVERSITY_ORDERS = (1, 2, 3, 4)  # distinct-n for these n
REPETITION_ORDER = 4  # repetition rate counts repeated 4-grams (bytes: about one short word)
PROFILE_BUCKETS = 256  # hashed n-gram profile length: 512 bytes per individual in float16


def _rows(tokens) -> list[list[int]]:
    """Token sequences as lists: a 1-D or 2-D tensor, one list of ints, or a list of sequences."""
    if isinstance(tokens, torch.Tensor):
        return [tokens.tolist()] if tokens.dim() == 1 else tokens.tolist()
    tokens = list(tokens)
    if tokens and not isinstance(tokens[0], (list, tuple, torch.Tensor)):
        return [[int(t) for t in tokens]]
    return [t.tolist() if isinstance(t, torch.Tensor) else list(t) for t in tokens]


def _ngrams(row: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]


def distinct_n(tokens, n: int) -> float:
    """Distinct n-grams over all n-grams (Li et al. 2016), pooled over the rows; n-grams never cross rows.

    1.0 when no n-gram repeats, near 0 for a model that always writes the same thing; 0.0 without n-grams.
    """
    seen: set[tuple[int, ...]] = set()
    total = 0
    for row in _rows(tokens):
        grams = _ngrams(row, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def repetition_rate(tokens, n: int = REPETITION_ORDER) -> float:
    """Share of each row's n-grams that repeat an earlier n-gram of the same row (seq-rep-n, Welleck et al.
    2019), averaged over rows: 0 for text that never loops, near 1 for one token written over and over."""
    rates = []
    for row in _rows(tokens):
        grams = _ngrams(row, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def diversity_score(tokens) -> float:
    """The diversity term: mean of distinct-1..4 and (1 - repetition rate), in [0, 1]."""
    parts = [distinct_n(tokens, n) for n in DIVERSITY_ORDERS] + [1.0 - repetition_rate(tokens)]
    return sum(parts) / len(parts)


def ngram_profile(tokens: torch.Tensor, buckets: int = PROFILE_BUCKETS) -> np.ndarray:
    """Counts of the n-grams (n = 1..4, never across rows) of ``tokens`` (rows, length), hashed into
    ``buckets`` and scaled to unit length: texts sharing many n-grams point the same way."""
    tokens = tokens.detach().to("cpu", torch.int64)
    counts = torch.zeros(buckets, dtype=torch.float64)
    for n in DIVERSITY_ORDERS:
        if tokens.shape[1] < n:
            continue
        ids = torch.zeros(tokens.shape[0], tokens.shape[1] - n + 1, dtype=torch.int64)
        for k in range(n):  # a base-257 number per n-gram: exact in int64 for n <= 4
            ids = ids * 257 + tokens[:, k : tokens.shape[1] - n + 1 + k] + 1
        # A multiplicative hash with the order mixed in; int64 wrap-around is deterministic.
        hashed = torch.remainder((ids * 0x9E3779B1 + n * 0x85EBCA6B) >> 7, buckets)
        counts += torch.bincount(hashed.reshape(-1), minlength=buckets).double()
    norm = counts.norm()
    return (counts / norm if norm > 0 else counts).numpy().astype(np.float16)


def novelty_scores(profiles: list) -> list[float]:
    """Each profile's mean cosine distance to the other (not None) profiles; 0 with no others.

    Profiles are unit vectors of non-negative counts, so every distance lies in [0, 1]."""
    present = [i for i, p in enumerate(profiles) if p is not None]
    scores = [0.0] * len(profiles)
    if len(present) < 2:
        return scores
    matrix = np.stack([np.asarray(profiles[i], dtype=np.float64) for i in present])
    distances = 1.0 - np.clip(matrix @ matrix.T, 0.0, 1.0)
    means = distances.sum(axis=1) / (len(present) - 1)  # the diagonal is 0
    for i, value in zip(present, means):
        scores[i] = float(value)
    return scores


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters other than newline and tab (an ESC a young model
    sampled, say) become U+FFFD, so model output can never drive the terminal."""
    return "".join(
        c
        if c in "\n\t" or not unicodedata.category(c).startswith("C") or unicodedata.category(c) in ("Co", "Cn")
        else "\ufffd"
        for c in text
    )
