"""Editing images with a trained diffusion model: inpainting, SDEdit, and edits through DDIM inversion (lesson 12).

None of these trains anything. Each reuses the reverse process of a model the learner already has and changes
only where it starts or what it keeps:

- **inpainting** (`inpaint`): at every step the known pixels are replaced by the original image noised to the
  current level, ``x <- m * q_sample(x0, t) + (1 - m) * x``, so the model fills the rest in agreement with them
  (the "replacement" method, already in Sohl-Dickstein et al. 2015 and Song et al. 2021). RePaint (Lugmayr et al.
  2022) adds **resampling**: after each step, noise the result back one step and denoise it again, ``resample``
  times, so the filled region has more steps to harmonise with the known one.
- **SDEdit** (Meng et al. 2022; `sdedit`): noise an image (or a rough sketch) to level t0 = round(strength x T) - 1 and
  denoise it from there. Low strength keeps the input's layout and changes little; high strength keeps little of
  it and gives a realistic image.
- **inversion edit** (`invert_edit`): DDIM-invert an image under its own condition to the noise level t0, then run
  DDIM back down under another condition (lesson 05's inversion with the condition changed on the way down).

Every function takes the model, its schedule and the usual sampler arguments (``cond``, ``guidance``, ``uncond``,
``generator``, ``callback``); a step is lesson 05's DDIM step (``eta=1``: with fresh noise, as DDPM; ``eta=0``:
deterministic). ``mask`` is 1 where a pixel is known (kept) and 0 where it is to be filled.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.provenance import resolve
from diffedu.samplers import (
    Callback,
    ddim_step,
    ddim_timesteps,
    eval_mode,
    model_device,
    predict,
    progress_bar,
    randn,
)
from diffedu.schedules import NoiseSchedule

__all__ = ["half_mask", "inpaint", "invert_edit", "noised_to", "sdedit", "start_step"]


def half_mask(shape: tuple[int, ...], which: str) -> Tensor:
    """A (1, 1, H, W) mask that is 1 on the known half and 0 on the half to fill: ``which`` is the half to fill,
    "bottom", "top", "right" or "left"."""
    H, W = shape[-2:]  # noqa: N806
    mask = torch.ones(1, 1, H, W)
    if which == "bottom":
        mask[..., H // 2:, :] = 0
    elif which == "top":
        mask[..., : H // 2, :] = 0
    elif which == "right":
        mask[..., W // 2:] = 0
    elif which == "left":
        mask[..., : W // 2] = 0
    else:
        raise ValueError(f"which half to fill: 'bottom', 'top', 'right' or 'left', got {which!r}")
    return mask


def noised_to(x0: Tensor, t: int, schedule: NoiseSchedule, noise: Tensor) -> Tensor:
    """x0 noised to level t, sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; t = -1 is x0 itself."""
    if t < 0:
        return x0
    abar = schedule.alphas_cumprod[t].item()
    return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise


def _check_mask(mask: Tensor, image: Tensor) -> Tensor:
    if not isinstance(mask, Tensor) or mask.ndim != image.ndim:
        raise ValueError(f"mask must be a tensor shaped like the images {tuple(image.shape)} (or broadcastable: "
                         f"(1, 1, H, W)), 1 where a pixel is known and 0 where it is to be filled; got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    try:
        torch.broadcast_shapes(mask.shape, image.shape)
    except RuntimeError:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast against the images "
                         f"{tuple(image.shape)}") from None
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("mask must hold only 0 (fill) and 1 (keep); threshold a drawn mask first: "
                         "(mask > 0.5).float()")
    return mask.to(image.device, image.dtype)


@torch.no_grad()
def inpaint(model: Callable[..., Tensor], schedule: NoiseSchedule, image: Tensor, mask: Tensor, *, steps: int = 50,
            eta: float = 1.0, resample: int = 1, cond: Tensor | None = None, guidance: float | None = None,
            uncond: Tensor | None = None, generator: torch.Generator | None = None, clip_x0: bool | None = None,
            callback: Callback | None = None, progress: bool = True) -> Tensor:
    """Fill the pixels where ``mask`` is 0 so that they agree with the known ones (mask 1) of ``image`` (B, C, H, W).

    From x ~ N(0, I), for each DDIM step t -> t_prev:

        x_prev = ddim_step(x, t, t_prev, model)                   the model's step, everywhere
        x_prev = m * noised_to(image, t_prev) + (1 - m) * x_prev  the known pixels replaced, at the same noise level
        (resample > 1: noise x_prev back to level t, x = sqrt(abar_t / abar_prev) x_prev + sqrt(1 - abar_t /
         abar_prev) z, and repeat the step; RePaint's resampling with jumps of one step)

    The result keeps the known pixels exactly. Model calls: ``(steps - 1) * resample + 1`` (each doubled in one batch
    with guidance): the last step, to x_0, is not resampled. The callback gets {"i", "t", "x", "pred_x0"} after each
    step. Random draws, in order: x_T; then in each pass of each step (while t_prev >= 0) the step's noise (when
    eta > 0), the known pixels' noise, and, before a resampling pass, the noise that backs up one step.
    """
    if resample < 1:
        raise ValueError(f"resample must be >= 1 (1: no resampling), got {resample}")
    prediction, clip_x0 = resolve(model, schedule, None, clip_x0, "inpaint")
    device = model_device(model)
    image = image.to(device).float()
    mask = _check_mask(mask, image)
    timesteps = ddim_timesteps(schedule.T, steps)
    x = randn(tuple(image.shape), generator, device)
    with eval_mode(model):
        for i, t in enumerate(progress_bar(timesteps, progress, "inpaint")):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            for u in range(resample if t_prev >= 0 else 1):  # the last step (to x_0) has nothing to resample
                pred_x0, eps = predict(model, x, t, schedule, cond=cond, guidance=guidance, uncond=uncond,
                                       prediction=prediction, clip_x0=clip_x0)
                noise = randn(tuple(x.shape), generator, device) if eta > 0 and t_prev >= 0 else None
                x_prev = ddim_step(x, t, t_prev, eps, schedule, eta, noise, pred_x0=pred_x0)
                known = image if t_prev < 0 else noised_to(image, t_prev, schedule,
                                                            randn(tuple(x.shape), generator, device))
                x_prev = mask * known + (1 - mask) * x_prev
                if u + 1 < resample and t_prev >= 0:  # back up one step, and take it again
                    ratio = schedule.alphas_cumprod[t].item() / schedule.alphas_cumprod[t_prev].item()
                    x = ratio**0.5 * x_prev + (1 - ratio) ** 0.5 * randn(tuple(x.shape), generator, device)
            x = x_prev
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    return x


def start_step(schedule: NoiseSchedule, strength: float) -> int:
    """The timestep SDEdit starts from: round(strength x T) - 1, for strength in (0, 1] (1: pure noise, T - 1)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1] (the fraction of the noise schedule to go back), got {strength}")
    return max(0, round(strength * schedule.T) - 1)


def _denoise_from(model: Callable[..., Tensor], schedule: NoiseSchedule, x: Tensor, timesteps: list[int], *, eta: float,
                  cond: Tensor | None, guidance: float | None, uncond: Tensor | None, generator: torch.Generator | None,
                  callback: Callback | None, progress: bool, desc: str, clip_x0: bool | None = None) -> Tensor:
    """DDIM steps along ``timesteps`` (descending, starting at x's level) down to x_0."""
    prediction, clip_x0 = resolve(model, schedule, None, clip_x0, desc)
    device = x.device
    with eval_mode(model):
        for i, t in enumerate(progress_bar(timesteps, progress, desc)):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            pred_x0, eps = predict(model, x, t, schedule, cond=cond, guidance=guidance, uncond=uncond,
                                   prediction=prediction, clip_x0=clip_x0)
            noise = randn(tuple(x.shape), generator, device) if eta > 0 and t_prev >= 0 else None
            x = ddim_step(x, t, t_prev, eps, schedule, eta, noise, pred_x0=pred_x0)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    return x


def _levels_below(schedule: NoiseSchedule, steps: int, t0: int) -> list[int]:
    """``steps`` evenly spaced DDIM levels from t0 down to 0 (fewer when t0 is small)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer (model calls on the way down), got {steps!r}")
    n = max(1, min(steps, t0 + 1))
    levels = torch.linspace(t0, 0, n).round().long().tolist()
    return sorted(set(levels), reverse=True)


@torch.no_grad()
def sdedit(model: Callable[..., Tensor], schedule: NoiseSchedule, image: Tensor, strength: float, *, steps: int = 50,
           eta: float = 1.0, cond: Tensor | None = None, guidance: float | None = None, uncond: Tensor | None = None,
           generator: torch.Generator | None = None, callback: Callback | None = None,
           progress: bool = True) -> Tensor:
    """SDEdit: noise ``image`` (B, C, H, W) to t0 = `start_step`(strength), then DDIM-denoise it to x_0 in about
    ``steps`` steps (as many as fit below t0). At strength 1 the start is almost pure noise (the linear schedule's
    sqrt(abar_999) = 0.006 of the image is left)."""
    device = model_device(model)
    t0 = start_step(schedule, strength)
    image = image.to(device).float()
    x = noised_to(image, t0, schedule, randn(tuple(image.shape), generator, device))
    return _denoise_from(model, schedule, x, _levels_below(schedule, steps, t0), eta=eta, cond=cond, guidance=guidance,
                         uncond=uncond, generator=generator, callback=callback, progress=progress, desc="SDEdit")


@torch.no_grad()
def invert_edit(model: Callable[..., Tensor], schedule: NoiseSchedule, image: Tensor, source: Tensor, target: Tensor,
                *, strength: float = 0.6, steps: int = 50, guidance: float | None = None,
                uncond: Tensor | None = None, clip_x0: bool | None = None, progress: bool = True) -> Tensor:
    """Invert ``image`` with deterministic DDIM under its own condition ``source`` up to level t0 =
    `start_step`(strength), then run DDIM (eta = 0) back down under ``target``: the same noise, another condition.

    With strength 1 the inversion goes all the way to x_T; with ``target = source``, no guidance and
    ``clip_x0=False`` this is lesson 05's `ddim_invert` round trip. Lower strengths keep more of the original's shape.
    Guidance applies on the way down only; there, as in the samplers, an image model's predicted x0 is clamped to
    [-1, 1] unless ``clip_x0=False`` (the inversion never clamps)."""
    device = model_device(model)
    t0 = start_step(schedule, strength)
    image = image.to(device).float()
    levels = _levels_below(schedule, steps, t0)  # descending, t0 .. 0
    x = image
    prediction, _ = resolve(model, schedule, None, False, "invert_edit")
    with eval_mode(model):  # up: from the data through the levels in ascending order (as ddim_invert does)
        ascending = levels[::-1]
        for i, t in enumerate(progress_bar(ascending, progress, "DDIM inversion")):
            s = ascending[i - 1] if i > 0 else ascending[0]
            pred_x0, eps = predict(model, x, s, schedule, cond=source, prediction=prediction)
            if i == 0:
                pred_x0 = image
            abar_t = schedule.alphas_cumprod[t].item()
            x = abar_t**0.5 * pred_x0 + (1 - abar_t) ** 0.5 * eps
    return _denoise_from(model, schedule, x, levels, eta=0.0, cond=target, guidance=guidance, uncond=uncond,
                         generator=None, callback=None, progress=progress, desc="DDIM edit", clip_x0=clip_x0)

