"""Whole-population forward passes for low-rank genomes (EGGROLL, Sarkar et al. 2025, "Evolution
Strategies at the Hyperscale", arXiv:2511.16652).

Each individual's weight matrix is ``W + A_i B_i^T`` (its low-rank entries, scales folded into
``A_i``); vectors (biases, norms) get full-rank deltas. The population becomes an extra batch
dimension: the model's own ``forward`` runs once on the tokens stacked P times (P*B rows,
individual by individual), so attention, activations and everything unperturbed run once for
everyone. For the pass, each module that owns an evolving tensor has its ``forward`` replaced (and
restored after) by one that gives each individual's rows that individual's weights:

- ``nn.Linear``: one of two exact paths, whichever moves fewer bytes. Factored (EGGROLL's): ``x W^T``
  for every individual's tokens in one matmul, then ``(x B_i) A_i^T`` added by one fused batched
  multiply-add; no perturbed ``W`` is built: right when a matrix is large next to the tokens each
  individual scores. Folded: each individual's small ``W + A_i B_i^T`` built for the layer, then
  one batched matmul and no extra pass over the activations: right when ``in_features`` is below
  the tokens per individual (on 2 CPU cores, for a 64-wide model scoring 1,024 tokens, the
  factored path ran at 0.73x plain inference and the folded one faster).
- ``nn.Embedding``: the same choice, by vocabulary rows against tokens per individual.
- ``nn.LayerNorm``: each individual's scale and shift.
- ``nn.LSTM``: the fused kernels (ATen's, cuDNN's) take one weight for the whole batch, so no
  per-row correction can be slipped into them; the replacement projects every step's input at
  once, then runs the recurrence with each individual's whole ``W_hh`` (built once per layer: one
  batched multiply-add per step).
- any other module with evolving tensors (Hugging Face GPT-2's ``Conv1D``, a custom norm): its own
  forward under ``torch.func.vmap`` over individuals, each with its whole tensors (P copies of that
  module's parameters during the call).

A module's input is the stacked batch when it has two or more dimensions and P*B rows in front
(batch-first models: the GPT, the LSTM, Hugging Face causal LMs); any other input (``(T,)`` or
``(1, T)`` positions) is shared, and each individual's output is repeated over its rows (in place
of a leading batch of one). A model that reads a module's weights without calling it
(``nn.MultiheadAttention``) gets no batched pass: :func:`supports_population` refuses modules that
own parameters and have children. tests/test_population.py checks the GPT, the LSTM, a model
written for the test and a Hugging Face GPT-2 against scoring one individual at a time.

Speed: the general pass costs Python work per module call, and the threads evaluator's two Python
threads contend for the GIL over it. Against a hand-written GPT forward over the same operations
(the default model, 16 x 64 tokens, 2 CPU cores, interleaved in one process), it ran at 0.96x on
one thread and 0.93x on two at 2 individuals a pass, 0.98x / 0.96x at 4, 1.0x / 0.97x at 16: more
than noise where benchmarks/throughput.py's batched rate is taken (2 individuals). So the GPT keeps
that forward (:mod:`evolm.population_gpt`; a subclass takes the general pass). The LSTM has none: its
replacement ran 1.2x (one thread) to 1.35x (two) its old hand-written pass (a multiply-add a step, not three).

The factors are drawn exactly as :class:`evolm.genome.LowRankGenome` draws them, so a batched
fitness equals applying the genome to the model and scoring it alone (to float tolerance).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_map

from evolm.genome import LowRankGenome, gene_entries, mask_has
from evolm.models.base import to_device
from evolm.models.gpt import GPT
from evolm.population_gpt import gpt_population_pass


class PopulationDelta:
    """Per-individual low-rank factors ``(A: (P, out, R), B: (P, in, R))`` or vector deltas ``(P, n)``,
    by parameter name, for ``size`` individuals that each score ``rows`` sequences."""

    def __init__(self, genome: LowRankGenome, genes_list: list, rows: int = 1):
        self.size, self.rows = len(genes_list), rows
        # Keyed by parameter name; looked up with name() (None for a tensor that does not evolve).
        self.factors: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        self.deltas: dict[str | None, torch.Tensor] = {}
        # Modules find their evolving tensors by identity: a tied weight (one tensor, two modules) is
        # perturbed in both, as applying the genome in place perturbs it.
        self._names = {id(p): name for name, p in zip(genome.space.names, genome.space.parameters)}
        entries = [list(gene_entries(genes)) for genes in genes_list]
        layouts: dict = {}  # tensors with the same active entries (every tensor, without masks) share one layout
        for index, (name, tensor) in enumerate(zip(genome.space.names, genome.space.tensors)):
            active = tuple(tuple((s, c) for s, c, m in row if mask_has(m, index)) for row in entries)
            if not any(active):
                continue
            if (active, tensor.device) not in layouts:
                layouts[active, tensor.device] = self._layout(active, genome.rank, tensor.device)
            seeds, padded, picks, scales, coefficients = layouts[active, tensor.device]
            # Each seed's noise is drawn once (antithetic partners share it), on the tensor's device
            # (nothing crosses from the host), then placed for every individual by one gather or matmul.
            if tensor.dim() == 2:
                drawn = [genome.factors(seed, index) for seed in seeds]
                a_all = torch.stack([a for a, _ in drawn])  # (seeds [+ a zero block], out, r)
                b_all = torch.stack([b for _, b in drawn])
                if padded:  # a shorter row's empty slots pick a zero block
                    a_all = torch.cat([a_all, torch.zeros_like(a_all[:1])])
                    b_all = torch.cat([b_all, torch.zeros_like(b_all[:1])])
                # Individual i's k-th entry fills columns k*r .. (k+1)*r - 1 of A and B (scale / sqrt(r) in A).
                a = (a_all[picks] * scales[:, :, None, None]).transpose(1, 2).reshape(self.size, tensor.shape[0], -1)
                b = b_all[picks].transpose(1, 2).reshape(self.size, tensor.shape[1], -1)
                self.factors[name] = (a.to(tensor.dtype), b.to(tensor.dtype))
                continue
            noise = torch.empty(len(seeds), tensor.numel(), device=tensor.device)
            for k, seed in enumerate(seeds):  # copied out: the genome's noise cache holds one seed at a time
                noise[k] = genome.noise(seed, index).reshape(-1)
            self.deltas[name] = (coefficients @ noise).to(tensor.dtype)

    @staticmethod
    def _layout(active, rank: int, device):
        """Distinct seeds, whether a row is short, per (individual, entry slot) the seed's position
        (``len(seeds)``: empty) and ``scale / sqrt(rank)``, and the (P, seeds) vector-delta coefficients."""
        seeds = list(dict.fromkeys(seed for row in active for seed, _ in row))
        slot = {seed: k for k, seed in enumerate(seeds)}
        width = max(len(row) for row in active)
        picks = [[slot[seed] for seed, _ in row] + [len(seeds)] * (width - len(row)) for row in active]
        scales = [[scale / math.sqrt(rank) for _, scale in row] + [0.0] * (width - len(row)) for row in active]
        coefficients = [[0.0] * len(seeds) for _ in active]
        for i, row in enumerate(active):
            for seed, scale in row:
                coefficients[i][slot[seed]] += scale
        tensors = (to_device(torch.tensor(v), device) for v in (picks, scales, coefficients))
        return seeds, any(len(row) < width for row in active), *tensors

    def name(self, param: torch.Tensor | None) -> str | None:
        """The space's name of ``param`` when this population perturbs it, else None."""
        name = self._names.get(id(param)) if param is not None else None
        return name if name in self.factors or name in self.deltas else None

    def full(self, param: torch.Tensor) -> torch.Tensor:
        """Every individual's whole perturbed tensor, ``(P, *param.shape)``."""
        name = self.name(param)
        if name in self.factors:
            a, b = self.factors[name]
            return torch.baddbmm(param.unsqueeze(0), a, b.transpose(1, 2))
        return param.unsqueeze(0) + self.deltas[name].view(self.size, *param.shape)

    # --- the stacked batch: P*B rows, individual i's rows i*B .. (i+1)*B - 1

    def stacked(self, x: torch.Tensor) -> bool:
        return x.dim() >= 2 and x.shape[0] == self.size * self.rows

    def broadcast(self, out: torch.Tensor) -> torch.Tensor:
        """``(P, *S)``: each individual's output of a shared input -> ``(P*B, *S)``, repeated over its rows."""
        return out.unsqueeze(1).expand(self.size, self.rows, *out.shape[1:]).flatten(0, 1)

    def split(self, x: torch.Tensor, trailing: int = 1):
        """``x`` as ``(P, N, *last trailing dims)`` per individual, and the function that puts a result
        ``(P, N, *features)`` back in ``x``'s layout (with the stacked batch in front)."""
        features = x.shape[x.dim() - trailing :]
        leading = x.shape[: x.dim() - trailing]
        if self.stacked(x):
            return x.reshape(self.size, -1, *features), lambda out: out.reshape(*leading, *out.shape[2:])
        shared = x.reshape(1, -1, *features).expand(self.size, *(-1,) * (1 + trailing))
        if x.dim() >= 2 and x.shape[0] == 1:  # a batch of one, broadcast over the batch: the stacked batch replaces it
            leading = leading[1:]
        return shared, lambda out: self.broadcast(out.reshape(self.size, *leading, *out.shape[2:]))

    # --- per-individual operations on (P, N, features)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x``: (P, N, in) -> (P, N, out), each individual with its own perturbed weight and bias."""
        population, count, features = x.shape
        factors = self.factors.get(self.name(weight))
        delta = self.deltas.get(self.name(bias))
        if bias is not None and delta is not None:
            bias = bias.unsqueeze(0) + delta  # (P, out)
        if factors is None:
            return (
                F.linear(x, weight, bias)
                if bias is None or bias.dim() == 1
                else F.linear(x, weight).add_(bias.unsqueeze(1))
            )
        a, b = factors
        if features < count:
            # Folded path: each individual's W + A_i B_i^T, then one batched matmul with the bias fused in.
            folded = torch.baddbmm(weight.unsqueeze(0), a, b.transpose(1, 2))
            if bias is None:
                return torch.bmm(x, folded.transpose(1, 2))
            start = bias.unsqueeze(1) if bias.dim() == 2 else bias.expand(population, 1, -1)
            return torch.baddbmm(start, x, folded.transpose(1, 2))
        # Factored path: shared matmul, then the low-rank correction fused into one multiply-add; at rank
        # one a broadcast multiply-add (a batched matmul of inner size one cost 1.5-3x as much on 2 CPU
        # cores, 16 individuals x 32 rows: a writing step).
        xb, out = torch.bmm(x, b), F.linear(x, weight)
        out = out.addcmul_(xb, a.transpose(1, 2)) if b.shape[2] == 1 else out.baddbmm_(xb, a.transpose(1, 2))
        if bias is None:
            return out
        return out.add_(bias.unsqueeze(1) if bias.dim() == 2 else bias)

    def embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``ids``: (P, N) -> (P, N, width), each individual with its own perturbed table."""
        name = self.name(weight)
        if name is None:
            return F.embedding(ids, weight)
        if name in self.deltas:
            return self._gather(self.full(weight), ids)
        a, b = self.factors[name]
        if weight.shape[0] < ids.shape[1]:  # folded: P small tables cost less than a pass over the output
            return self._gather(torch.baddbmm(weight.unsqueeze(0), a, b.transpose(1, 2)), ids)
        rows = torch.gather(a, 1, ids.unsqueeze(-1).expand(-1, -1, a.shape[-1]))  # A_i's rows of the tokens
        return torch.baddbmm(F.embedding(ids, weight), rows, b.transpose(1, 2))

    def _gather(self, tables: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        vocab, width = tables.shape[1:]
        offsets = torch.arange(self.size, device=ids.device).unsqueeze(1) * vocab
        return F.embedding(ids + offsets, tables.reshape(-1, width))

    def vector(self, param: torch.Tensor | None) -> Any:  # a tensor, or None when ``param`` is None
        """A parameter as ``(P, 1, *shape)`` per individual when perturbed (it broadcasts over each
        individual's rows of a ``(P, N, *shape)`` input), else unchanged."""
        return self.full(param).unsqueeze(1) if param is not None and self.name(param) else param

    def layer_norm(self, x: torch.Tensor, module: nn.LayerNorm) -> torch.Tensor:
        """``x``: (P, N, *normalized shape), each individual with its own perturbed scale and shift."""
        if not (self.name(module.weight) or self.name(module.bias)):
            return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)
        normed = F.layer_norm(x, module.normalized_shape, eps=module.eps)
        weight, bias = self.vector(module.weight), self.vector(module.bias)
        if weight is None:
            return normed + bias
        return normed * weight if bias is None else torch.addcmul(bias, normed, weight)


# --- module replacements: module, its call's arguments -> its output on the stacked batch


def _linear(delta: PopulationDelta, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    rows, restore = delta.split(x)
    return restore(delta.linear(rows, module.weight, module.bias))


def _embedding(delta: PopulationDelta, module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    rows, restore = delta.split(ids, trailing=0)
    return restore(delta.embedding(rows, module.weight))


def _layer_norm(delta: PopulationDelta, module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    rows, restore = delta.split(x, trailing=len(module.normalized_shape))
    return restore(delta.layer_norm(rows, module))


def _lstm(delta: PopulationDelta, module: nn.LSTM, x: torch.Tensor, hx=None):
    """Batch-first or not, one direction: input projections (and both biases) for all steps at once, then
    the recurrence, one batched multiply-add per step (PyTorch's gate order i, f, g, o)."""
    if not module.batch_first:
        x = x.transpose(0, 1)
    if not delta.stacked(x):
        raise ValueError(f"the batched population pass needs the LSTM's {delta.size * delta.rows} rows stacked")
    population, per = delta.size, delta.rows
    time, hidden = x.shape[1], module.hidden_size
    x = x.reshape(population, per * time, -1)
    finals_h, finals_c = [], []
    for layer in range(module.num_layers):
        w_ih, w_hh = getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(module, f"bias_ih_l{layer}", None), getattr(module, f"bias_hh_l{layer}", None)
        gates_x = delta.linear(x, w_ih, b_ih)
        if b_hh is not None:
            gates_x.add_(delta.vector(b_hh))
        gates_x = gates_x.view(population, per, time, -1)
        # Each individual's whole W_hh^T, built once for all steps: a step is then one baddbmm, where
        # the factored form would take three passes per step over a batch of only ``per`` rows.
        recurrent = (delta.full(w_hh) if delta.name(w_hh) else w_hh.expand(population, -1, -1)).transpose(1, 2)
        if hx is None:
            h = x.new_zeros(population, per, hidden)
            c = x.new_zeros(population, per, hidden)
        else:
            h, c = (state[layer].reshape(population, per, hidden) for state in hx)
        outputs = []
        for t in range(time):
            i, f, g, o = torch.baddbmm(gates_x[:, :, t], h, recurrent).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        x = torch.stack(outputs, dim=2).reshape(population, per * time, hidden)
        finals_h.append(h.reshape(population * per, hidden))
        finals_c.append(c.reshape(population * per, hidden))
    output = x.reshape(population * per, time, hidden)
    output = output if module.batch_first else output.transpose(0, 1)
    return output, (torch.stack(finals_h), torch.stack(finals_c))


def _vmapped(delta: PopulationDelta, module: nn.Module, *args, **kwargs):
    """Any module: its own forward once per individual under vmap, with that individual's whole tensors.
    Keyword arguments are passed to every individual as they are (shared)."""
    params = {name: delta.full(p) for name, p in module.named_parameters(recurse=False) if delta.name(p)}
    dims = tuple(0 if isinstance(a, torch.Tensor) and delta.stacked(a) else None for a in args)
    args = tuple(a.unflatten(0, (delta.size, delta.rows)) if d == 0 else a for a, d in zip(args, dims))

    def one(individual, *inputs):
        return torch.func.functional_call(module, individual, inputs, kwargs)

    out = torch.func.vmap(one, in_dims=(0, *dims))(params, *args)
    if any(d == 0 for d in dims):
        return tree_map(lambda t: t.flatten(0, 1), out)
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is not None and first.dim() >= 2 and first.shape[0] == 1:  # a batch of one: the stacked batch replaces it
        out = tree_map(lambda t: t.squeeze(1), out)
    return tree_map(delta.broadcast, out)


REPLACEMENTS: dict = {nn.Linear: _linear, nn.Embedding: _embedding, nn.LayerNorm: _layer_norm, nn.LSTM: _lstm}


def _replacement(module: nn.Module):
    """The population forward for ``module``'s type, when it calls the type's own ``forward``."""
    kinds = (kind for kind in REPLACEMENTS if isinstance(module, kind) and type(module).forward is kind.forward)
    return REPLACEMENTS.get(next(kinds, None))


def _supported(module: nn.Module) -> bool:
    if next(module.parameters(recurse=False), None) is None:
        return True  # owns nothing that evolves
    if next(module.children(), None) is not None:
        return False  # may use its parameters, or its children's, outside their own forward
    if isinstance(module, nn.RNNBase):  # fused kernels vmap cannot split; only the plain LSTM is replaced
        return isinstance(module, nn.LSTM) and not module.bidirectional and not module.proj_size
    return not (isinstance(module, nn.Embedding) and module.max_norm is not None)  # renormalises in place


def supports_population(model) -> bool:
    return all(_supported(module) for module in model.modules())


class _PopulationForward:
    """The forward a module runs during the pass: its replacement, or its own forward under vmap."""

    def __init__(self, module: nn.Module, delta: PopulationDelta):
        self.module, self.delta = module, delta
        self.own = module.__dict__.get("forward")  # an instance forward (a library's hook): kept, restored after
        self.original = self.own or type(module).forward.__get__(module)
        self.replacement = _replacement(module)
        self.inside = False  # _vmapped calls the module again: that call runs its own forward

    def __call__(self, *args, **kwargs):
        if self.replacement is not None:
            return self.replacement(self.delta, self.module, *args, **kwargs)
        if self.inside:
            return self.original(*args, **kwargs)
        self.inside = True
        try:
            return _vmapped(self.delta, self.module, *args, **kwargs)
        finally:
            self.inside = False


@contextlib.contextmanager
def population_forwards(model: nn.Module, delta: PopulationDelta):
    """Within: every module of ``model`` that owns a tensor ``delta`` perturbs runs per individual."""
    replaced = []
    try:
        for module in model.modules():
            # A module's own parameters (_parameters, not parameters(recurse=False)): this runs every pass.
            if any(delta.name(p) for p in module._parameters.values()):
                replaced.append(_PopulationForward(module, delta))
                module.forward = replaced[-1]
        yield
    finally:
        for forward in replaced:
            if forward.own is None:
                del forward.module.forward
            else:
                forward.module.forward = forward.own


@torch.no_grad()
def general_population_logits(model: nn.Module, tokens: torch.Tensor, delta: PopulationDelta) -> torch.Tensor:
    """Logits (P, B, T, V) of every individual on the same tokens (B, T), from the model's own forward."""
    stacked = tokens.repeat(delta.size, *(1,) * (tokens.dim() - 1))  # individual i's rows: i*B .. (i+1)*B - 1
    with population_forwards(model, delta):
        logits = model(stacked)
    return logits.reshape(delta.size, *tokens.shape, -1)


@torch.no_grad()
def gpt_population_logits(model: GPT, tokens: torch.Tensor, delta: PopulationDelta) -> torch.Tensor:
    """The GPT's fast path (see "Speed" above): (P, B, T, vocab) logits of ``tokens`` (B, T) for every
    individual, from the forward written out in :func:`evolm.population_gpt.gpt_population_pass`."""
    batch, time = tokens.shape
    ids = tokens.reshape(1, -1).expand(delta.size, -1)
    logits, _ = gpt_population_pass(model, delta, ids, rows=batch)
    return logits.reshape(delta.size, batch, time, -1)


@torch.no_grad()
def population_log_likelihood(model, batch, genome: LowRankGenome, genes_list: list) -> list[float]:
    """Mean log-likelihood per token of ``batch`` for every genome, in one batched pass."""
    delta = PopulationDelta(genome, genes_list, rows=batch.inputs.shape[0])
    forward = gpt_population_logits if type(model) is GPT else general_population_logits  # exact type: see "Speed"
    logits = forward(model, batch.inputs, delta)
    population = logits.shape[0]
    targets = batch.targets.reshape(1, -1).expand(population, -1).reshape(-1)
    # Log-softmax over the contiguous vocabulary axis (a transposed class axis ran 2x slower).
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets, reduction="none")
    return (-losses.view(population, -1).mean(dim=1)).tolist()
