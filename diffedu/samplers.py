"""Samplers: from noise x_T back to data, one denoising step at a time.

Every sampler is a plain function with the same shape of signature,
`sampler(model, schedule, shape, *, generator=None, callback=None, ...)`, and one readable loop.
After each step it calls `callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})`, so plots,
animations and widgets need no change to the sampler.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from diffedu.predictions import Prediction, check_prediction, eps_from_x0, to_x0_and_eps
from diffedu.schedules import NoiseSchedule

Callback = Callable[[dict[str, Any]], None]
Variance = Literal["beta", "beta_tilde"]
VARIANCES: tuple[str, ...] = ("beta", "beta_tilde")


def ddpm_posterior(x0: Tensor, x_t: Tensor, t: int, schedule: NoiseSchedule) -> tuple[Tensor, float]:
    """Mean and variance of the forward posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).

        mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t          (abar_{-1} = 1: nothing to add at t = 0)
    """
    beta, alpha, abar, abar_prev = _coefficients(schedule, t)
    mean = (abar_prev**0.5 * beta / (1 - abar)) * x0 + (alpha**0.5 * (1 - abar_prev) / (1 - abar)) * x_t
    return mean, (1 - abar_prev) / (1 - abar) * beta


def ddpm_step(
    x_t: Tensor, t: int, eps: Tensor, schedule: NoiseSchedule, noise: Tensor, variance: Variance = "beta"
) -> Tensor:
    """One ancestral step of DDPM (Ho et al. 2020, Algorithm 2, line 4):

        x_{t-1} = (x_t - beta_t / sqrt(1 - alpha-bar_t) * eps) / sqrt(alpha_t) + sigma_t z

    with sigma_t^2 = beta_t ("beta") or the posterior's beta-tilde_t ("beta_tilde"), and no noise
    at the last step (t = 0). `eps` is the predicted noise; `noise` is z ~ N(0, I).
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(map(repr, VARIANCES))}")
    beta, alpha, abar, abar_prev = _coefficients(schedule, t)
    mean = (x_t - beta / (1 - abar) ** 0.5 * eps) / alpha**0.5
    if t == 0:
        return mean
    sigma2 = beta if variance == "beta" else (1 - abar_prev) / (1 - abar) * beta
    return mean + sigma2**0.5 * noise


@torch.no_grad()
def ddpm_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    x_T: Tensor | None = None,  # noqa: N803
    cond: Tensor | None = None,
    prediction: Prediction = "eps",
    variance: Variance = "beta",
    clip_x0: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2): T model calls from x_T ~ N(0, I) to x_0.

    Args:
        model: called as model(x_t, t) or model(x_t, t, cond), t of shape (B,).
        schedule: the schedule the model was trained with.
        shape: (B, ...) of the samples.
        generator: makes the draws (x_T, then z at each step) reproducible.
        callback: called after each step with {"i", "t", "x", "pred_x0"}.
        x_T: the starting noise; drawn when None.
        cond: conditioning passed through to the model.
        prediction: what the model outputs ("eps", "x0" or "v").
        variance: sigma_t^2 = beta_t or beta-tilde_t.
        clip_x0: clamp the predicted x_0 to [-1, 1] at each step (helps images; leave off for other data).
        device: where to sample; defaults to the model's device.
        progress: show a progress bar.
    """
    check_prediction(prediction)
    device = torch.device(device) if device is not None else model_device(model)
    x = randn(shape, generator, device) if x_T is None else x_T.to(device)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, but shape={tuple(shape)}")
    with eval_mode(model):
        for i, t in enumerate(progress_bar(range(schedule.T - 1, -1, -1), progress, "DDPM")):
            pred_x0, eps = predict(model, x, t, schedule, cond=cond, prediction=prediction, clip_x0=clip_x0)
            noise = randn(shape, generator, device) if t > 0 else torch.zeros_like(x)
            x = ddpm_step(x, t, eps, schedule, noise, variance)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    return x


def predict(
    model: Callable[..., Tensor],
    x_t: Tensor,
    t: int,
    schedule: NoiseSchedule,
    *,
    cond: Tensor | None = None,
    prediction: Prediction = "eps",
    clip_x0: bool = False,
) -> tuple[Tensor, Tensor]:
    """Call the model at step t and return its (pred_x0, eps), with x_0 optionally clamped to [-1, 1]."""
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    output = model(x_t, t_batch) if cond is None else model(x_t, t_batch, cond)
    output = output.float()
    pred_x0, eps = to_x0_and_eps(output, x_t, t_batch, schedule, prediction)
    if clip_x0:
        pred_x0 = pred_x0.clamp(-1, 1)
        eps = eps_from_x0(pred_x0, x_t, t_batch, schedule)
    return pred_x0, eps


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal noise drawn on the generator's device (so seeds give the same numbers anywhere)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def model_device(model: Callable[..., Tensor]) -> torch.device:
    """The device of a module's first parameter, or the CPU for plain functions."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: Callable[..., Tensor]) -> Iterator[None]:
    """Put a module in eval mode (no dropout) for the block, then restore its mode."""
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def progress_bar(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _coefficients(schedule: NoiseSchedule, t: int) -> tuple[float, float, float, float]:
    """(beta_t, alpha_t, alpha-bar_t, alpha-bar_{t-1}) as Python floats, with alpha-bar_{-1} = 1."""
    if not 0 <= t < schedule.T:
        raise ValueError(f"t must lie in 0..{schedule.T - 1}, got {t}")
    abar_prev = schedule.alphas_cumprod[t - 1].item() if t > 0 else 1.0
    return (
        schedule.betas[t].item(),
        schedule.alphas[t].item(),
        schedule.alphas_cumprod[t].item(),
        abar_prev,
    )
