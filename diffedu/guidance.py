"""Classifier-free guidance (Ho & Salimans 2022): one model, asked twice, and the answers extrapolated.

A model trained with its condition dropped now and then (label K, or the empty prompt) predicts both
eps(x_t, t, c) and eps(x_t, t, null). Guidance with scale w moves the prediction away from the
unconditional one, towards and past the conditional one:

    eps_w = eps_uncond + w (eps_cond - eps_uncond)          (w = 0: unconditional, w = 1: conditional)

Since eps is proportional to minus the score, -sqrt(1 - abar) grad log p(x_t), this samples
p(x_t) p(c | x_t)^w: for w > 1 an implicit classifier's opinion is sharpened.

The samplers in `diffedu.samplers` take `guidance=w, uncond=null` and call `guided_output` here.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def cfg_combine(out_cond: Tensor, out_uncond: Tensor, w: float) -> Tensor:
    """The classifier-free guidance combination, out_uncond + w (out_cond - out_uncond).

    The two outputs have the same shape; w = 0 returns out_uncond and w = 1 returns out_cond.
    """
    if out_cond.shape != out_uncond.shape:
        raise ValueError(
            f"out_cond and out_uncond must have the same shape, got {tuple(out_cond.shape)} "
            f"and {tuple(out_uncond.shape)}"
        )
    return out_uncond + w * (out_cond - out_uncond)


def expand_uncond(uncond: Tensor | int, cond: Tensor) -> Tensor:
    """The unconditional condition as a full batch like `cond`, (B,) labels or (B, L) token ids.

    `uncond` is either already a batch of cond's shape, or ONE row that is repeated: a 0-d or
    1-element label (the null label K) for labels (B,), a (L,) or (1, L) token row for (B, L).
    It takes cond's dtype and device.
    """
    if not isinstance(cond, Tensor) or cond.ndim < 1:
        got = f"a tensor of shape {tuple(cond.shape)}" if isinstance(cond, Tensor) else type(cond).__name__
        raise ValueError(f"guidance needs cond as a batch, (B,) labels or (B, L) tokens; got {got}")
    uncond = torch.as_tensor(uncond, device=cond.device).to(cond.dtype)
    row = tuple(cond.shape[1:])
    if tuple(uncond.shape) == tuple(cond.shape):
        return uncond
    if tuple(uncond.shape) in (row, (1, *row)):
        return uncond.reshape(1, *row).expand(cond.shape[0], *row)  # (B, ...)
    raise ValueError(
        f"uncond has shape {tuple(uncond.shape)}, which fits neither cond's batch {tuple(cond.shape)} "
        f"nor one row of it {row or '()'}; pass the null condition once (e.g. torch.tensor(K) for labels, "
        f"the empty prompt's (L,) tokens) or once per example"
    )


def guided_output(
    model: Callable[..., Tensor], x_t: Tensor, t: Tensor, cond: Tensor | None, uncond: Tensor | int | None, w: float
) -> Tensor:
    """The guided model output cfg_combine(model(x_t, t, cond), model(x_t, t, uncond), w) in ONE call.

    The conditional and unconditional halves go through the model together as a batch of 2B:
    model(cat[x_t, x_t], cat[t, t], cat[cond, uncond]), then split and combined.
    """
    _check_guidance(w)
    if cond is None or uncond is None:
        missing = " and ".join(name for name, v in (("cond", cond), ("uncond", uncond)) if v is None)
        raise ValueError(
            f"guidance={w} needs both cond and uncond, but {missing} is missing; pass uncond=the null "
            f"condition (label K for a class-conditional UNet, the empty prompt's tokens for text) "
            f"or guidance=None for plain conditional sampling"
        )
    uncond = expand_uncond(uncond, cond)
    B = x_t.shape[0]  # noqa: N806
    if cond.shape[0] != B:
        raise ValueError(f"cond has a batch of {cond.shape[0]}, but x_t has {B}; pass one condition per sample")
    output = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond])).float()  # (2B, ...)
    out_cond, out_uncond = output[:B], output[B:]
    return cfg_combine(out_cond, out_uncond, w)


def _check_guidance(w: float) -> None:
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
        raise ValueError(f"guidance must be a finite number (0: unconditional, 1: conditional, >1: guided), got {w!r}")
