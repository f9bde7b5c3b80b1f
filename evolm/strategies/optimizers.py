"""The center's optimiser in an ES run: Adam or plain SGD over the evolving tensors, stepped chunk by chunk.

The ascent direction of an ES update arrives as noise chunks (the genome's), never as one
model-sized gradient tensor; these optimisers take it chunk by chunk, so an ES worker holds the
weights' undo snapshot, the optimiser moments (Adam) and scratch the size of one chunk. Their state
dicts keep torch.optim's layout (``state``/``param_groups``), so a checkpoint reads as PyTorch's.
"""

from __future__ import annotations

from typing import Any

import torch

from evolm.genome import flat_view


def _flat_parts(tensor: torch.Tensor):
    """A flat view of ``tensor`` and a write-back (None when the view is the tensor itself)."""
    flat = flat_view(tensor)
    if flat is not None:
        return flat, None
    copy = tensor.contiguous()
    return copy.view(-1), lambda: tensor.copy_(copy.view(tensor.shape))


class ChunkedSgd:
    """``theta += lr * (g - weight_decay * theta)`` chunk by chunk: torch.optim.SGD's step without
    momentum, with the ascent direction as a negative gradient. No state: :meth:`state_dict` is None."""

    def __init__(self, parameters, lr: float, weight_decay: float = 0.0):
        self.parameters = list(parameters)
        self.lr = lr
        self.weight_decay = weight_decay

    def step_tensor(self, index: int, chunks) -> None:
        parameter = self.parameters[index].data
        flat, write_back = _flat_parts(parameter)
        for start, stop, ascent in chunks:
            target = flat[start:stop]
            grad = ascent.neg_().to(parameter.dtype)  # torch optimisers minimise
            if self.weight_decay != 0:
                grad = grad.add(target, alpha=self.weight_decay)
            target.add_(grad, alpha=-self.lr)
        if write_back is not None:
            write_back()

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state) -> None:
        pass  # nothing to restore: the step has no state


class ChunkedAdam:
    """torch.optim.Adam's step (its single-tensor formula, amsgrad off) applied chunk by chunk.

    :meth:`state_dict` and :meth:`load_state_dict` use torch.optim.Adam's format (``state`` by
    parameter index with ``step``, ``exp_avg``, ``exp_avg_sq``; one entry in ``param_groups``), so
    checkpoints written by either load into the other. Elementwise operations give the same bits on
    a chunk as on the whole tensor. Not a ``torch.optim.Adam`` itself: constructing one imports
    torch._dynamo, about 70 MB of resident memory for nothing here.
    """

    def __init__(self, parameters, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        self.parameters = list(parameters)
        self.group: dict[str, Any] = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": False,
        }
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def state_dict(self) -> dict:
        """Adam's format; the tensors are the live moments (references, no copy)."""
        return {
            "state": {index: dict(state) for index, state in self.state.items()},
            "param_groups": [{**self.group, "params": list(range(len(self.parameters)))}],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.parameters):
            raise ValueError("optimizer state does not match the evolving parameters")
        # As torch.optim.Adam does: the saved hyperparameters win, moments follow each parameter's dtype and device.
        self.group.update({key: value for key, value in groups[0].items() if key != "params"})
        self.group["betas"] = tuple(self.group["betas"])
        self.state = {}
        for position, saved in state_dict["state"].items():
            index = groups[0]["params"].index(int(position))
            parameter = self.parameters[index]
            self.state[index] = {
                key: value if key == "step" else value.to(dtype=parameter.dtype, device=parameter.device)
                for key, value in saved.items()
            }

    def step_tensor(self, index: int, chunks) -> None:
        lr, (beta1, beta2), eps, weight_decay = (self.group[k] for k in ("lr", "betas", "eps", "weight_decay"))
        parameter = self.parameters[index]
        state = self.state.get(index)
        if state is None:  # Adam's lazy initialisation (its step counter is a host scalar tensor)
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state = self.state[index] = {
                "step": torch.tensor(0.0, dtype=scalar),
                "exp_avg": torch.zeros_like(parameter, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(parameter, memory_format=torch.preserve_format),
            }
        state["step"] += 1
        step = state["step"].item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        data = parameter.data
        flat, write_back = _flat_parts(data)
        exp_avg, avg_back = _flat_parts(state["exp_avg"])
        exp_avg_sq, sq_back = _flat_parts(state["exp_avg_sq"])
        for start, stop, ascent in chunks:
            target, m, v = flat[start:stop], exp_avg[start:stop], exp_avg_sq[start:stop]
            grad = ascent.neg_().to(data.dtype)  # torch optimisers minimise
            if weight_decay != 0:
                grad = grad.add(target, alpha=weight_decay)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            # (sqrt(v) / c2) + eps, into the ascent chunk (no longer needed) when the dtypes agree: no temporary.
            denom = torch.sqrt(v, out=ascent) if ascent.dtype == v.dtype else v.sqrt()
            target.addcdiv_(m, denom.div_(bias_correction2_sqrt).add_(eps), value=-step_size)
        for back in (write_back, avg_back, sq_back):
            if back is not None:
                back()


def make_center_optimizer(parameters, config):
    """The center's step over the evolving tensors: Adam as in Salimans et al. (their L2 coefficient is
    weight_decay), or plain SGD (``strategy.optimizer = "sgd"``), both applied chunk by chunk."""
    strategy = config.strategy
    if getattr(strategy, "optimizer", "adam") == "sgd":
        return ChunkedSgd(parameters, lr=strategy.learning_rate, weight_decay=strategy.weight_decay)
    return ChunkedAdam(parameters, lr=strategy.learning_rate, weight_decay=strategy.weight_decay)
