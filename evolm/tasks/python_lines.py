"""Finish a line of Python so that it parses: a constraint whose reward is a non-differentiable check.

Qiu et al. 2025 (arXiv 2509.24372) show evolution strategies fine-tuning a model on rewards a program
computes from the output (a conciseness target, a verifier). Here the program is Python's own parser:
a prompt is the start of a real line of Python (indentation stripped, cut where the prefix alone does
not parse), the completion runs to the newline, and the reward is 1.0 when prefix + completion parses
with :func:`ast.parse` as one line, else 0.0 (:func:`parses_as_line`).

The text is the Python source that ships with the interpreter running evolm: the top-level ``.py``
files of ``sysconfig.get_paths()["stdlib"]`` in sorted order, each under :data:`MAX_FILE_BYTES`, until
:data:`TARGET_BYTES` (deterministic for one Python version; ``info["python"]`` says which). A seeded
tenth or so of the files, by bytes, is held out and placed at the end of :attr:`Task.corpus_text`, so
the held-out lines lie in the corpus's validation part (the last 10%) and a start model trained on
the corpus (``evolm train --task python-lines``) never reads them. Training prompts come from the
other files. ``info["heldout_real_lines_parse"]`` checks the checker: the share of candidate
held-out lines that parse whole (about 1.0); only those become prompts.

A "real line" is a logical line of the source on one physical line (from :mod:`tokenize`): simple
statements, block headers (``def f(x):``, ``else:``, ``except KeyError as error:``) and decorators,
without a trailing comment. Block headers get an indented ``pass`` to parse, and lines that continue a
block (``elif``, ``else``, ``except``, ``finally``, ``case``) or wait for one (a decorator) get the
lines they need around them.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import sys
import sysconfig
import tokenize
import warnings
from pathlib import Path

from evolm.seeding import numpy_generator
from evolm.tasks.base import Task

NEW_TOKENS = 40  # a completion is at most 39 bytes and its newline
MIN_PREFIX = 3  # prompt length in characters: from a few ...
MAX_PREFIX = 20  # ... to about twenty
MAX_FILE_BYTES = 20_000  # files larger than this are skipped, so no one module dominates the text
TARGET_BYTES = 800_000  # stop adding files past this many bytes
HELDOUT_BYTE_SHARE = 0.12  # held-out files: at least this share of the bytes, so they cover the last 10%
VALIDATION_SHARE = 0.1  # data.val_fraction's default: the corpus's last 10% validates
TRAIN_PROMPTS = 4096
HELDOUT_PROMPTS = 512

# Lines that continue a block parse after the block they continue; a decorator before a function.
_BLOCK = "    pass"
_BEFORE = {
    "elif": "if x:\n" + _BLOCK + "\n",
    "else": "if x:\n" + _BLOCK + "\n",
    "except": "try:\n" + _BLOCK + "\n",
    "finally": "try:\n" + _BLOCK + "\n",
}
_TRY_END = "\nfinally:\n" + _BLOCK  # a try block parses once it ends
_KEYWORD = re.compile(r"\w*")
_PARSE_FAILURES = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError)


def _parses(source: str) -> bool:
    try:
        with warnings.catch_warnings():  # invalid escapes and the like warn; a warning is no failure
            warnings.simplefilter("ignore")
            ast.parse(source)
    except _PARSE_FAILURES:
        return False
    return True


def parses_as_line(line: str) -> bool:
    """Whether ``line`` (one line, indentation stripped) parses as Python, a block header with a body.

    Tried: the line alone; with an indented ``pass`` after it (``if x:``); then, by the line's first
    word, after an ``if`` or ``try`` block (``elif``, ``else``, ``except``, ``finally``), before a
    ``finally`` (``try``), inside a ``match`` (``case``) or before a function (a decorator). A line holding a line break (``\\n``, ``\\r``) or a null byte is never one line.
    """
    line = line.strip(" \t")
    if not line or any(mark in line for mark in ("\n", "\r", "\x00")):
        return False
    candidates = [line]
    if ":" in line:  # a block header (the only lines that need a body) holds a colon
        candidates.append(line + "\n" + _BLOCK)
    keyword = _KEYWORD.match(line)[0]  # type: ignore[index]  # a leading word or nothing: always matches
    if keyword == "try":
        candidates += [line + "\n" + _BLOCK + _TRY_END, line + _TRY_END]
    if keyword in _BEFORE:
        candidates += [_BEFORE[keyword] + line, _BEFORE[keyword] + line + "\n" + _BLOCK]
    if keyword == "case":
        candidates += ["match x:\n    " + line, "match x:\n    " + line + "\n    " + _BLOCK]
    if line.startswith("@"):
        candidates.append(line + "\ndef f():\n" + _BLOCK)
    return any(_parses(source) for source in candidates)


def _cut(completion: str) -> str:
    return completion.split("\n", 1)[0]


def parse_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1.0 when prompt + completion (cut at the newline) parses as one line (:func:`parses_as_line`), else 0.0."""
    return [float(parses_as_line(prompt + _cut(completion))) for prompt, completion in zip(prompts, completions)]


def stdlib_files() -> list[Path]:
    """The sorted top-level ``.py`` files of the running interpreter's standard library that the text uses."""
    chosen, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        size = path.stat().st_size
        if size > MAX_FILE_BYTES or total >= TARGET_BYTES:
            continue
        chosen.append(path)
        total += size
    return chosen


def _read_source(path: Path) -> str | None:
    """A file's text if it is UTF-8 and parses (a file that does not is skipped), ending with a newline."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not _parses(text):
        return None
    return text if text.endswith("\n") else text + "\n"


def real_lines(text: str) -> list[tuple[int, str]]:
    """(character offset, line) of each logical line on one physical line, without indentation or comment."""
    rows = text.splitlines(keepends=True)
    row_offsets = [0]
    for row in rows:
        row_offsets.append(row_offsets[-1] + len(row))
    found = []
    start = end = None  # the logical line's first token start and last non-comment token end
    skipped = (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NEWLINE:
            if start is not None and end is not None and start[0] == end[0]:
                row = rows[start[0] - 1]
                found.append((row_offsets[start[0] - 1] + start[1], row[start[1] : end[1]].strip()))
            start = end = None
        elif token.type not in skipped and token.type != tokenize.ENDMARKER:
            start = start or token.start
            end = token.end
    return found


def _prompt_of(line: str, generator) -> str | None:
    """A seeded cut of ``line`` into a prompt that does not parse and a rest that fits the completion.

    The cut lengths are tried in a seeded random order and the first that qualifies wins: a uniform
    choice among the qualifying cuts, with a parse or two per line instead of one per cut."""
    lengths = range(MIN_PREFIX, min(MAX_PREFIX, len(line) - 1) + 1)
    for index in generator.permutation(len(lengths)):
        length = lengths[index]
        if len(line[length:].encode()) < NEW_TOKENS and not parses_as_line(line[:length]):
            return line[:length]
    return None


@functools.lru_cache(maxsize=4)
def _build(seed: int, stdlib: str) -> tuple:
    """The corpus, prompts and figures for a data seed (cached: the same for every worker in a process)."""
    sources = [(path.name, text) for path in stdlib_files() if (text := _read_source(path)) is not None]
    total = sum(len(text.encode()) for _, text in sources)
    order = numpy_generator(seed, "python-lines", "files").permutation(len(sources))
    heldout_names, heldout_bytes = set(), 0
    for index in order:
        if heldout_bytes >= HELDOUT_BYTE_SHARE * total:
            break
        heldout_names.add(sources[index][0])
        heldout_bytes += len(sources[index][1].encode())
    train_sources = [(name, text) for name, text in sources if name not in heldout_names]
    heldout_sources = [(name, text) for name, text in sources if name in heldout_names]
    corpus_text = "".join(text for _, text in train_sources + heldout_sources)
    # Held-out lines only past the validation boundary: the first character of the corpus's last 10% of bytes.
    corpus_bytes = corpus_text.encode()
    boundary = len(corpus_bytes[: int(len(corpus_bytes) * (1.0 - VALIDATION_SHARE))].decode(errors="ignore"))
    train_lines, heldout_lines, offset = [], [], 0
    for name, text in train_sources + heldout_sources:
        for position, line in real_lines(text):
            if name not in heldout_names:
                train_lines.append(line)
            elif offset + position >= boundary:
                heldout_lines.append(line)
        offset += len(text)
    heldout_parse = sum(map(parses_as_line, heldout_lines)) / max(1, len(heldout_lines))
    prompts: dict[str, tuple[str, ...]] = {}
    train_set: set[str] = set()
    for split, lines, count in (("train", train_lines, TRAIN_PROMPTS), ("heldout", heldout_lines, HELDOUT_PROMPTS)):
        generator = numpy_generator(seed, "python-lines", "prompts", split)
        chosen: dict[str, None] = {}  # ordered and without repeats
        for index in generator.permutation(len(lines)):
            line = lines[index]
            prompt = _prompt_of(line, generator) if parses_as_line(line) else None
            if prompt is not None and prompt not in train_set:
                chosen[prompt] = None
            if len(chosen) >= count:
                break
        prompts[split] = tuple(chosen)
        train_set = set(prompts["train"])
    info = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "files": len(sources),
        "heldout_files": sorted(heldout_names),
        "corpus_bytes": len(corpus_bytes),
        "train_prompts": len(prompts["train"]),
        "heldout_prompts": len(prompts["heldout"]),
        "heldout_real_lines": len(heldout_lines),
        "heldout_real_lines_parse": heldout_parse,
    }
    return corpus_text, prompts["train"], prompts["heldout"], info


def python_lines_task(seed: int) -> Task:
    corpus_text, train, heldout, info = _build(seed, sysconfig.get_paths()["stdlib"])
    return Task(
        name="python-lines",
        train_prompts=list(train),
        heldout_prompts=list(heldout),
        reward=parse_reward,
        new_tokens=NEW_TOKENS,
        stop="\n",
        description="finish the start of a real line of Python so that the line parses with ast.parse; reward 1 or 0",
        corpus_text=corpus_text,
        info=dict(info),
    )


def build_python_lines(settings, corpus_text: str, reference) -> Task:
    """The python-lines task of ``settings.seed``; it brings its own corpus (the interpreter's source)."""
    return python_lines_task(settings.seed)
