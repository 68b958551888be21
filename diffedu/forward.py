"""The forward process in closed form: q(x_t | x_0), and the checks its inputs get.

Ho et al. 2020, eq. 4: because a sum of Gaussians is Gaussian,

    q(x_t | x_0) = N(x_t; sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I)

so a noisy image at any step is one line, with eps ~ N(0, I):

    x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps

`forward_chain` runs the Markov chain itself, one step and one fresh noise at a time (lesson 01 checks the
closed form against it).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from diffedu.schedules import NoiseSchedule

#: Data far outside [-1, 1] is almost always a scaling bug (pixels in 0..255). Latents scaled to
#: unit variance stay well below this.
MAX_ABS_DATA = 10.0


def q_sample(x0: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) with the given noise: sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps.

    Args:
        x0: clean data, shape (B, ...), scaled to about [-1, 1].
        t: integer timesteps, shape (B,), each in 0..T-1 (0 is the first noising step).
        eps: standard Gaussian noise, the same shape as x0.
        schedule: the noise schedule.
    """
    check_data(x0, "x0")
    check_timesteps(t, x0, schedule)
    check_noise(eps, x0)
    abar = broadcast_to(schedule.alphas_cumprod, t, x0)  # (B, 1, ..., 1)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps


def forward_chain(x0: Tensor, schedule: NoiseSchedule, keep: list[int] | tuple[int, ...]) -> Tensor:
    """Run q(x_t | x_{t-1}) step by step from x0; the states after the steps in `keep`, stacked in keep's order.

    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, with fresh noise eps_t = torch.randn_like(x) at every
    step (torch's global generator). Steps count from 0 as in `q_sample`: the state after applying betas[t] is
    distributed as q_sample(x0, t, ...). Returns (len(keep), *x0.shape).
    """
    check_data(x0, "x0")
    keep = [int(k) for k in keep]
    if not keep or min(keep) < 0 or max(keep) >= schedule.T:
        raise ValueError(f"keep must name at least one step, each in 0..{schedule.T - 1} (T = {schedule.T}); "
                         f"got {keep}")
    betas = schedule.betas.to(device=x0.device, dtype=x0.dtype)
    x, kept = x0, {}
    for t in range(max(keep) + 1):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn_like(x)
        if t in keep:
            kept[t] = x
    return torch.stack([kept[t] for t in keep])


def broadcast_to(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """values[t] shaped (B, 1, ..., 1) so it broadcasts against x of shape (B, ...)."""
    out = values.to(device=x.device, dtype=x.dtype)[t.to(x.device)]  # (B,)
    return out.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def check_timesteps(t: Tensor, x: Tensor, schedule: NoiseSchedule) -> None:
    """Refuse timesteps of the wrong type, batch size or range, with a message that names the fix.

    The range is checked for CPU tensors only: on a GPU reading a value back would stall every step.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a tensor of integer timesteps, shape ({x.shape[0]},); got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"t must hold integer timesteps (torch.long), got dtype {t.dtype}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must have one timestep per item of the batch: shape ({x.shape[0]},), got {tuple(t.shape)}"
        )
    if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= schedule.T):
        raise ValueError(
            f"timesteps must lie in 0..{schedule.T - 1} (T = {schedule.T}); got values from "
            f"{t.min().item()} to {t.max().item()}"
        )


def check_noise(eps: Tensor, x0: Tensor) -> None:
    """Refuse noise that does not match the data: another shape, dtype or device."""
    if not isinstance(eps, Tensor):
        raise TypeError(f"eps must be a tensor shaped like x0 {tuple(x0.shape)}, got {type(eps).__name__}")
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}, got {tuple(eps.shape)}")
    if eps.dtype != x0.dtype or eps.device != x0.device:
        raise TypeError(f"eps is a {eps.dtype} tensor on {eps.device}, x0 a {x0.dtype} tensor on {x0.device}; "
                        f"draw the noise like the data: torch.randn_like(x0)")


def check_data(x: Tensor, name: str = "x0") -> None:
    """Refuse data that is not a float tensor, is empty, holds NaN or is far outside [-1, 1]; warn about
    images in [0, 1]. Values are checked on the CPU only."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a float tensor scaled to [-1, 1], got dtype {x.dtype}; "
            "convert images with x.float() / 127.5 - 1"
        )
    if x.ndim < 2:
        raise ValueError(f"{name} must be batched, shape (B, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch, shape {tuple(x.shape)}: give at least one example")
    if x.device.type != "cpu" or not x.numel():
        return  # on a GPU, reading the peak back would stall each step; `train` checks its data once
    check_finite(x, name)
    lo, hi = x.detach().aminmax()
    peak = max(-lo.item(), hi.item())
    if not peak < MAX_ABS_DATA:
        raise ValueError(
            f"{name} has values up to {peak:.4g}, far outside [-1, 1]; diffusion expects data scaled to "
            "about [-1, 1] (for 0..255 images use x / 127.5 - 1)"
        )
    if looks_like_unit_images(x, lo.item(), hi.item()):
        warnings.warn(UNIT_IMAGES, DataRangeWarning, stacklevel=3)


def check_finite(x: Tensor, name: str = "x0", var: str | None = None) -> None:
    """Refuse a batch (B, ...) with NaN or inf in any example, naming how many and the first (on any device)."""
    finite = torch.isfinite(x.detach()).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad, var = (~finite).nonzero().flatten().tolist(), var or name
        raise ValueError(f"{name} holds NaN or infinite values in {len(bad)} of {x.shape[0]} examples (the first at "
                         f"index {bad[0]}); drop or repair them, e.g. {var}[torch.isfinite({var}).flatten(1).all(1)]")


class DataRangeWarning(UserWarning):
    """Images in [0, 1] given where the course's diffusion expects [-1, 1]."""


UNIT_IMAGES = ("the images lie in [0, 1], but diffusion here expects [-1, 1]: the noise is N(0, 1) around data "
               "centred on 0, and samplers clamp to [-1, 1]. Rescale them with x * 2 - 1")


def looks_like_unit_images(x: Tensor, lo: float, hi: float) -> bool:
    """Images (B, 1 or 3, H, W) whose values all lie in [0, 1] and reach above 0.5: pixels never rescaled."""
    return x.ndim == 4 and x.shape[1] in (1, 3) and lo >= 0 and 0.5 < hi <= 1
