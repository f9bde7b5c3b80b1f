"""Hugging Face causal language models from a local checkpoint folder: ``--model hf:PATH``.

An optional extra (``pip install evolm[hf]``: transformers and tokenizers), imported only when a run
asks for it. The folder is what ``save_pretrained`` writes for a model and its tokenizer; it is read
with ``AutoModelForCausalLM`` and ``AutoTokenizer`` with ``local_files_only=True``: nothing is ever
downloaded. The checkpoint's tokenizer replaces bytes for the corpus and the fitness terms, and
generation runs the model's own key/value cache with evolm's seeded sampling.

By default only the attention and MLP weights of the last block evolve (``--params`` chooses
others, matched against the checkpoint's own parameter names, e.g. ``'h\\.1[01]\\.mlp'``; ``--params .``
evolves every tensor). Evolution perturbs weights in place, so a run needs about the memory of
running the model plus a snapshot (and Adam moments) of the evolving tensors only.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evolm.errors import UsageError
from evolm.models.base import LanguageModel
from evolm.models.build import resolve_device
from evolm.seeding import scoped_torch_seed

PREFIX = "hf:"
DEFAULT_PARAMS = ".*"  # config.genome.params's default; for a Hugging Face model it means "the default subset"
INSTALL_HINT = "install evolm[hf] (pip install 'evolm[hf]': transformers and tokenizers)"


def is_hf(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def hf_path(name: str) -> Path:
    """The checkpoint folder of ``hf:PATH``, checked to exist and to look like a ``save_pretrained`` folder."""
    text = name[len(PREFIX) :] if is_hf(name) else str(name)
    if not text:
        raise UsageError("config field model.name: hf: needs a checkpoint folder, e.g. hf:./my-gpt2")
    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(
            f"config field model.name: Hugging Face checkpoint folder {path} does not exist "
            f"(evolm loads local checkpoints only, never downloads)"
        )
    if not path.is_dir():
        raise UsageError(f"config field model.name: {path} is a file; hf:PATH needs the folder save_pretrained wrote")
    if not (path / "config.json").is_file():
        raise UsageError(f"config field model.name: {path} has no config.json (not a Hugging Face checkpoint folder?)")
    return path


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError(f"a Hugging Face model (hf:PATH) needs the optional extra: {INSTALL_HINT}") from None
    return transformers


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class HFTokenizer:
    """A Hugging Face tokenizer as evolm uses one: ``encode(text) -> LongTensor``, ``decode(ids) -> str``, ``vocab_size``.

    No special tokens are added: the corpus is one stream of text tokens, as with bytes.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)  # with added tokens (len), not only the base vocabulary

    def encode(self, text: str) -> torch.Tensor:
        # verbose=False: a whole corpus is longer than the model's context on purpose (it is cut into windows).
        ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, tokens) -> str:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.tolist()
        return self.tokenizer.decode([int(t) for t in tokens])


@dataclass
class HFInfo:
    """What evolm reads from ``model.config``: the longest sequence the model takes."""

    context: int | None
    vocab_size: int
    path: str = ""


def _accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters  # explicitly: every Hugging Face forward also takes **kwargs


class HFCausalLM(LanguageModel):
    """A Hugging Face causal LM behind evolm's model interface: ``forward(tokens) -> logits`` and cached
    ``generate`` (``prefill``/``step`` over the model's own key/value cache, sampled by
    :func:`evolm.models.base.sample_next`, so sampling is seeded and reproducible).

    Its parameters are the Hugging Face model's, under the prefix ``model.``. Tied weights (GPT-2's
    ``lm_head.weight`` is ``transformer.wte.weight``) appear once in ``state_dict``, so safetensors can
    store it; loading fills the alias back in.
    """

    inner_prefix = "model."

    def __init__(self, model: nn.Module, path: str = ""):
        super().__init__()
        self.model = model
        settings: Any = model.config
        context = getattr(settings, "n_positions", None) or getattr(settings, "max_position_embeddings", None)
        self.config = HFInfo(context=int(context) if context else None, vocab_size=int(settings.vocab_size), path=path)
        forward = model.forward
        # transformers 5 renamed past_key_values to cache (argument and output field); 4.x knows only the old name.
        self._cache_key = "cache" if _accepts(forward, "cache") else "past_key_values"
        self._keep_last = {"logits_to_keep": 1} if _accepts(forward, "logits_to_keep") else {}
        self._aliases = self._tied_aliases()
        # Public hook registration where torch has it (2.4+), the long-standing private one before.
        (getattr(self, "register_state_dict_post_hook", None) or self._register_state_dict_hook)(
            HFCausalLM._drop_aliases
        )
        self._register_load_state_dict_pre_hook(HFCausalLM._fill_aliases, with_module=True)

    @property
    def inner(self) -> nn.Module:
        return self.model

    # Tied weights ------------------------------------------------------------------------------------

    def _tied_aliases(self) -> dict[str, str]:
        """``{alias: source}`` for every parameter reachable under two names (the first name is the source)."""
        first: dict[int, str] = {}
        aliases = {}
        for name, parameter in self.named_parameters(remove_duplicate=False):
            if id(parameter) in first:
                aliases[name] = first[id(parameter)]
            else:
                first[id(parameter)] = name
        return aliases

    @staticmethod
    def _drop_aliases(module, state_dict, prefix, local_metadata) -> None:
        for alias in module._aliases:
            state_dict.pop(prefix + alias, None)

    @staticmethod
    def _fill_aliases(
        module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        for alias, source in module._aliases.items():
            if prefix + alias not in state_dict and prefix + source in state_dict:
                state_dict[prefix + alias] = state_dict[prefix + source]

    # Forward and cached generation ---------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        context = self.config.context
        if context is not None and tokens.shape[1] > context:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the model context {context}")
        return self.model(input_ids=tokens, use_cache=False).logits

    def prefill(self, prompt: torch.Tensor):
        context = self.config.context
        window = prompt if context is None else prompt[:, -context:]
        output = self.model(input_ids=window, use_cache=True, **self._keep_last)
        return output.logits[:, -1], (output[self._cache_key], window)

    def step(self, tokens: torch.Tensor, state):
        cache, window = state
        window = torch.cat([window, tokens], dim=1)
        context = self.config.context
        if context is not None and window.shape[1] > context:
            # Out of positions: re-encode the last half-context once, then continue cached (as evolm's GPT does).
            return self.prefill(window[:, -(context // 2 + 1) :])
        output = self.model(input_ids=tokens, use_cache=True, **{self._cache_key: cache}, **self._keep_last)
        return output.logits[:, -1], (output[self._cache_key], window)


def load_hf_tokenizer(path) -> HFTokenizer:
    transformers = import_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UsageError(
            f"Hugging Face checkpoint {path}: its tokenizer cannot be loaded: {_first_line(error)}"
        ) from None
    return HFTokenizer(tokenizer)


def load_hf(name, device="cpu") -> tuple[HFCausalLM, HFTokenizer]:
    """The checkpoint folder of ``name`` (``hf:PATH`` or a path) as ``(HFCausalLM, HFTokenizer)``, in eval mode."""
    path = hf_path(name)
    transformers = import_transformers()
    tokenizer = load_hf_tokenizer(path)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UsageError(
            f"Hugging Face checkpoint {path}: the model cannot be loaded as a causal LM: {_first_line(error)}"
        ) from None
    wrapped = HFCausalLM(model, str(path)).to(device).eval()
    if tokenizer.vocab_size > wrapped.config.vocab_size:
        raise UsageError(
            f"Hugging Face checkpoint {path}: its tokenizer has {tokenizer.vocab_size} tokens but the "
            f"model's vocabulary only {wrapped.config.vocab_size}"
        )
    return wrapped, tokenizer


def build_hf(config, device=None) -> tuple[HFCausalLM, HFTokenizer]:
    """The model and tokenizer of a run config whose ``model.name`` is ``hf:PATH``, on ``device`` (default
    ``config.device``); ``model.context`` (the training window) must fit the checkpoint's positions."""
    with scoped_torch_seed(config.seed):  # weights the checkpoint lacks, if any, are initialised alike everywhere
        model, tokenizer = load_hf(config.model.name, resolve_device(device or config.device))
    context = model.config.context
    if context is not None and config.model.context > context:
        raise UsageError(
            f"config field model.context ({config.model.context}) exceeds the {context} positions of "
            f"Hugging Face checkpoint {model.config.path}"
        )
    return model, tokenizer


def blocks_of(model: nn.Module) -> tuple[str, int] | None:
    """``(name, count)`` of the model's stack of transformer blocks: its largest ``nn.ModuleList``."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (best is None or len(module) > best[1]):
            best = (name, len(module))
    return best


def default_params(model: nn.Module) -> str:
    """The default evolving subset of a Hugging Face model: attention and MLP weights of its last block
    (not its norms), as a regex over the checkpoint's own parameter names, e.g.
    ``^transformer\\.h\\.11\\.(attn|mlp)\\.``. A model without a block stack evolves its last linear layer."""
    inner = getattr(model, "inner", model)
    found = blocks_of(inner)
    if found is not None:
        name, count = found
        prefix = f"{name}.{count - 1}."
        last = dict(inner.get_submodule(f"{name}.{count - 1}").named_children())
        parts = sorted(
            child
            for child, module in last.items()
            if "norm" not in type(module).__name__.lower() and any(True for _ in module.parameters())
        )
        if parts:
            return "^" + re.escape(prefix) + "(" + "|".join(re.escape(p) for p in parts) + r")\."
        return "^" + re.escape(prefix)
    linears = [name for name, module in inner.named_modules() if isinstance(module, nn.Linear)]
    if linears:
        return "^" + re.escape(linears[-1] + ".")
    return DEFAULT_PARAMS


def resolved_params(config, model: nn.Module) -> str:
    """``genome.params`` for a Hugging Face model: its default subset unless the config names one."""
    return default_params(model) if config.genome.params == DEFAULT_PARAMS else config.genome.params


__all__ = [
    "HFCausalLM",
    "HFTokenizer",
    "INSTALL_HINT",
    "build_hf",
    "default_params",
    "hf_path",
    "is_hf",
    "load_hf",
    "load_hf_tokenizer",
    "resolved_params",
]
