"""An exponential moving average (EMA) of a model's weights, the copy that diffusion models sample from.

    theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n)) with warm-up

Lesson 04 writes `ema_update` (the in-place blend of two lists of tensors) as an exercise; `EMA` wraps it
as a `torch.optim.swa_utils.AveragedModel`, whose state dict the training checkpoints hold.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["EMA", "EMA_IMPLS", "ema_update", "make_ema"]

EMA_IMPLS = ("foreach", "swa_utils")


@torch.no_grad()
def ema_update(ema_params: list[Tensor], params: list[Tensor], decay: float) -> None:
    """In place, for each pair: theta_ema <- decay * theta_ema + (1 - decay) * theta (three foreach ops)."""
    torch._foreach_sub_(ema_params, params)  # ema - theta
    torch._foreach_mul_(ema_params, decay)  # decay (ema - theta)
    torch._foreach_add_(ema_params, params)  # decay ema + (1 - decay) theta


class EMA(AveragedModel):
    """An exponential moving average of a model's weights: a `torch.optim.swa_utils.AveragedModel`
    (same state dict) whose update never waits for the GPU.

        theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n)) with warm-up

    where n counts the updates so far (the first update copies), so an early EMA follows the model
    instead of staying near its random start. ``impl="foreach"``: `ema_update`'s three foreach kernels
    over all parameters, and the buffers copied with one more; n is a Python int. ``impl="swa_utils"``:
    AveragedModel's own ``update_parameters``, which loops over the parameters in Python and, on a GPU,
    copies its CPU counter n to the device every step (a host-device synchronisation; our ``float(n)``
    reads it back, a second one). Both give the same numbers; lesson 06 measures the difference.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True,
                 impl: Literal["foreach", "swa_utils"] = "foreach") -> None:
        if impl not in EMA_IMPLS:
            raise ValueError(f"unknown EMA impl {impl!r}; choose one of {', '.join(map(repr, EMA_IMPLS))}")

        def update(ema_params: list[Tensor], params: list[Tensor], n: Tensor) -> None:  # the swa_utils path
            ema_update(ema_params, params, self.decay_at(int(n)))

        super().__init__(model, multi_avg_fn=update, use_buffers=False)
        self.decay, self.warmup, self.impl = decay, warmup, impl
        self._count: int | None = None  # n as a Python int, read from the n_averaged buffer once
        self.module.eval()

    def decay_at(self, n: int) -> float:
        """d for the update after n earlier ones: min(decay, (1 + n) / (10 + n)) with warm-up, else decay."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """theta_ema <- d theta_ema + (1 - d) theta for every parameter; buffers are copied."""
        if self.impl == "swa_utils":
            super().update_parameters(model)
            self._count = None
            return
        if self._count is None:
            self._count = int(self.n_averaged)  # a CPU buffer unless moved: no wait
        ema_params, params = list(self.module.parameters()), list(model.parameters())
        if self._count == 0:
            torch._foreach_copy_(ema_params, params)
        else:
            ema_update(ema_params, params, self.decay_at(self._count))
        ema_buffers, buffers = list(self.module.buffers()), list(model.buffers())
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)
        self._count += 1
        self.n_averaged.fill_(self._count)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        self._count = None  # read n again from the loaded buffer
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def make_ema(model: nn.Module, decay: float = 0.999, warmup: bool = True,
             impl: Literal["foreach", "swa_utils"] = "foreach") -> EMA:
    """An `EMA` of `model`'s weights: call ``ema.update_parameters(model)`` after each step, sample from
    ``ema.module`` (a copy of the model, in eval mode).

        theta_ema <- d theta_ema + (1 - d) theta,   d = min(decay, (1 + n) / (10 + n)) with warm-up
    """
    return EMA(model, decay, warmup, impl)
