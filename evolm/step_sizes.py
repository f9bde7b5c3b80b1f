"""Per-parameter step sizes of a noise genome: the sigma vector of separable NES (:mod:`evolm.strategies.snes`).

A noise genome holding step sizes perturbs tensor ``i`` by ``scale * s_i * eps`` (elementwise) instead
of ``scale * eps``. ``s`` is a positive factor per evolving value, relative to the scale the genes
carry (the strategy's initial sigma); it starts at 1. Every worker holds its own copy and changes
it only through :meth:`StepSizes.step_chunk` from a broadcast update (seeds and weights), so all
copies stay identical, exactly like the weights.

Two layouts, per tensor:

- full: one factor per value (the seed genome; a low-rank genome's vectors: biases, norms);
- rank one: a low-rank genome's matrix gets ``s = outer(r, c)``, one factor per row and per column,
  so its perturbation ``s * (A B^T)`` is ``(r * A)(c * B)^T``: still of rank r, and EGGROLL's batched
  pass keeps its factored form (:meth:`scale_factors`). The SNES step of each value's log factor is
  projected onto ``log r_i + log c_j`` by least squares: the row mean plus the column mean minus the
  grand mean, the grand mean split evenly between rows and columns.

The full tensor is kept for both layouts (float32, on the tensor's device): the in-place perturbation
multiplies noise by it. A rank-one tensor's full factors are rebuilt from its row and column factors.
"""

from __future__ import annotations

import torch


class StepSizes:
    """The factors ``s`` of every evolving tensor of ``space`` (all 1 when made); ``factored``: matrices rank one."""

    def __init__(self, space, factored: bool = False):
        self.full: list[torch.Tensor] = []
        self.factors: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for tensor in space.tensors:
            self.full.append(torch.ones(tensor.shape, dtype=torch.float32, device=tensor.device))
            if factored and tensor.dim() == 2:
                rows, cols = tensor.shape
                ones = (torch.ones(n, dtype=torch.float32, device=tensor.device) for n in (rows, cols))
                self.factors.append((next(ones), next(ones)))
            else:
                self.factors.append(None)
        # A rank-one tensor's SNES log steps, summed by row and by column while its chunks go by.
        self._sums: dict[int, list[torch.Tensor]] = {}

    def chunk(self, index: int, start: int, stop: int) -> torch.Tensor:
        """Tensor ``index``'s factors at flat positions ``start:stop`` (a view: read it before stepping them)."""
        return self.full[index].view(-1)[start:stop]

    def scale_factors(self, index: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A rank-one tensor's noise factors ``(A, B)`` scaled by its row and column factors."""
        factors = self.factors[index]
        if factors is None:
            raise ValueError(f"tensor {index} has no rank-one step sizes")
        rows, cols = factors
        return a * rows[:, None], b * cols[:, None]

    def step_chunk(self, index: int, start: int, stop: int, log_step: torch.Tensor) -> None:
        """Take the SNES step ``s *= exp(log_step)`` on flat positions ``start:stop`` (``log_step`` is
        overwritten). A rank-one tensor's chunks are whole rows; its step lands in :meth:`finish`."""
        factors = self.factors[index]
        if factors is None:
            self.chunk(index, start, stop).mul_(log_step.exp_())
            return
        cols = factors[1].numel()
        if index not in self._sums:
            self._sums[index] = [torch.zeros_like(factors[0]), torch.zeros_like(factors[1])]
        row_sums, col_sums = self._sums[index]
        block = log_step.view(-1, cols)
        row_sums[start // cols : stop // cols] = block.sum(dim=1)
        col_sums.add_(block.sum(dim=0))

    def finish(self, index: int) -> None:
        """After the last chunk of tensor ``index``: a rank-one tensor takes its projected step."""
        if index not in self._sums:
            return
        row_sums, col_sums = self._sums.pop(index)
        rows, cols = self.factors[index]  # type: ignore[misc]
        half_grand = row_sums.sum() / (2 * rows.numel() * cols.numel())
        rows.mul_((row_sums / cols.numel() - half_grand).exp_())
        cols.mul_((col_sums / rows.numel() - half_grand).exp_())
        torch.outer(rows, cols, out=self.full[index].view(rows.numel(), cols.numel()))

    def tensors(self) -> list[torch.Tensor]:
        """What defines the step sizes, tensor by tensor (a rank-one tensor's rows and columns)."""
        return [t for full, factors in zip(self.full, self.factors) for t in (factors or (full,))]

    def summary(self) -> dict[str, float]:
        """Mean, smallest and largest factor over every evolving value."""
        count = sum(t.numel() for t in self.full)
        # Reduced on the device, read back once (not three reads per tensor).
        total = torch.stack([t.double().sum() for t in self.full]).sum()
        low = torch.stack([t.min() for t in self.full]).min().double()
        high = torch.stack([t.max() for t in self.full]).max().double()
        total_value, low_value, high_value = torch.stack([total, low, high]).tolist()
        return {"mean": total_value / count, "min": low_value, "max": high_value}

    def state_dict(self) -> dict:
        """``{"factors": [tensor or (rows, cols), ...]}``: the live tensors (references, no copy)."""
        return {"factors": [factors or full for full, factors in zip(self.full, self.factors)]}

    @classmethod
    def from_state_dict(cls, space, state: dict) -> StepSizes:
        """Step sizes for ``space`` from :meth:`state_dict` (copied onto each tensor's device)."""
        saved = state["factors"]
        if len(saved) != len(space.tensors):
            raise ValueError("step sizes do not match the evolving parameters")
        sizes = cls(space, factored=any(isinstance(entry, (tuple, list)) for entry in saved))
        for index, entry in enumerate(saved):
            if isinstance(entry, (tuple, list)):
                rows, cols = sizes.factors[index] or (None, None)
                if rows is None or cols is None:
                    raise ValueError(f"step sizes of tensor {index} are rank one, the tensor is not a matrix")
                rows.copy_(entry[0])
                cols.copy_(entry[1])
                torch.outer(rows, cols, out=sizes.full[index].view(rows.numel(), cols.numel()))
            else:
                sizes.factors[index] = None
                sizes.full[index].copy_(entry.view(sizes.full[index].shape))
        return sizes
