"""Samplers: from noise x_T back to data, one denoising step at a time.

Every sampler is a plain function with the same shape of signature,
`sampler(model, schedule, shape, *, generator=None, callback=None, ...)`, and one readable loop.
After each step it calls `callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})`, so plots,
animations and widgets need no change to the sampler.

Conditioning: `cond=` is passed to the model, (B,) class labels or (B, L) token ids. With
`guidance=w, uncond=null` each model call becomes classifier-free guidance (see `diffedu.guidance`):
the conditional and unconditional passes share one batched call and their outputs are combined
as out_uncond + w (out_cond - out_uncond).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffedu.guidance import cfg_combine, expand_uncond, guided_output  # noqa: F401 (re-exported)
from diffedu.predictions import Prediction, check_prediction, eps_from_x0, to_x0_and_eps
from diffedu.provenance import resolve
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
    guidance: float | None = None,
    uncond: Tensor | None = None,
    prediction: Prediction | None = None,
    variance: Variance = "beta",
    clip_x0: bool | None = None,
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
        cond: conditioning passed through to the model: (B,) labels or (B, L) token ids.
        guidance: classifier-free guidance scale w (None: off, the model sees cond alone).
        uncond: the null condition for guidance, one row (e.g. torch.tensor(K)) or a batch like cond.
        prediction: what the model outputs ("eps", "x0" or "v"); None: the model's own (see
            `diffedu.provenance`), "eps" for a model that does not record it.
        variance: sigma_t^2 = beta_t or beta-tilde_t.
        clip_x0: clamp the predicted x_0 to [-1, 1] at each step (helps images; leave off for other data).
            None: on for a model trained on images in [-1, 1], off otherwise (`diffedu.provenance`).
        device: where to sample; defaults to the model's device.
        progress: show a progress bar.
    """
    prediction, clip_x0 = resolve(model, schedule, prediction, clip_x0, "ddpm_sample")
    check_prediction(prediction)
    x, device = start_noise(model, shape, x_T, generator, device)
    with eval_mode(model):
        for i, t in enumerate(progress_bar(range(schedule.T - 1, -1, -1), progress, "DDPM")):
            pred_x0, eps = predict(
                model, x, t, schedule, cond=cond, guidance=guidance, uncond=uncond,
                prediction=prediction, clip_x0=clip_x0,
            )
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
    guidance: float | None = None,
    uncond: Tensor | None = None,
    prediction: Prediction = "eps",
    clip_x0: bool = False,
) -> tuple[Tensor, Tensor]:
    """Call the model at step t and return its (pred_x0, eps), with x_0 optionally clamped to [-1, 1].

    Without guidance the model is called as model(x_t, t) or model(x_t, t, cond). With guidance=w it
    is called ONCE on the doubled batch, model(cat[x_t, x_t], cat[t, t], cat[cond, uncond]), and the
    halves are combined, output = out_uncond + w (out_cond - out_uncond), before converting to
    (x0, eps). For "eps", "x0" and "v" models alike the conversion is linear in the output (with the
    same x_t), so combining outputs equals combining the eps (or x0) each half implies. `uncond` is
    ignored when guidance is None.
    """
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    if guidance is not None:
        output = guided_output(model, x_t, t_batch, cond, uncond, guidance)
    else:
        output = model(x_t, t_batch) if cond is None else model(x_t, t_batch, cond)
    output = output.float()
    pred_x0, eps = to_x0_and_eps(output, x_t, t_batch, schedule, prediction)
    if clip_x0:
        pred_x0 = pred_x0.clamp(-1, 1)
        eps = eps_from_x0(pred_x0, x_t, t_batch, schedule)
    return pred_x0, eps


def start_noise(model: Callable[..., Tensor], shape: tuple[int, ...], x_T: Tensor | None,  # noqa: N803
                generator: torch.Generator | None, device: torch.device | str | None) -> tuple[Tensor, torch.device]:
    """The starting noise x_T (drawn when None) on the sampling device (`device`, else the model's), and that device."""
    device = torch.device(device) if device is not None else model_device(model)
    x = randn(shape, generator, device) if x_T is None else x_T.to(device)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x.shape)}, but shape={tuple(shape)}")
    return x, device


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


# ---------------------------------------------------------------------------------------------
# DDIM (Song, Meng & Ermon 2021): the same trained model, fewer steps, and a deterministic path.
# ---------------------------------------------------------------------------------------------

Spacing = Literal["uniform", "quadratic"]
SPACINGS: tuple[str, ...] = ("uniform", "quadratic")


def ddim_timesteps(T: int, steps: int, spacing: Spacing = "uniform") -> list[int]:  # noqa: N803
    """The `steps` timesteps DDIM visits, in the order it visits them: descending from T - 1 to 0.

    Both ends are always included (a single step is just [T - 1]): the first model call sees pure
    noise at t = T - 1, and the last step goes from t = 0 to x_0. The values are distinct integers,
    so `steps = T` gives every step, T - 1, T - 2, ..., 0, exactly as DDPM.

    - "uniform":   t_k = round(k (T - 1) / (steps - 1)), evenly spaced.
    - "quadratic": t_k = round((T - 1) (k / (steps - 1))^2), i.e. (linspace(0, sqrt(T - 1), steps))^2,
      denser near t = 0 where the details are made. Song et al. (2021, app. D.2, CIFAR10) use
      (linspace(0, sqrt(0.8 T), steps))^2; here the range runs to T - 1 so the first step starts from
      noise, as in "uniform". Steps near 0 that round to the same integer are pushed up by one, so
      there are always `steps` distinct values (all <= T - 1, see the test).
    """
    _check_steps(steps, T)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(map(repr, SPACINGS))}")
    if steps == 1:
        return [T - 1]
    fraction = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)  # k / (steps - 1), ascending
    if spacing == "quadratic":
        fraction = fraction**2
    ascending: list[int] = []
    for value in torch.round(fraction * (T - 1)).long().tolist():
        value = value if not ascending else max(value, ascending[-1] + 1)  # keep them distinct
        ascending.append(min(value, T - 1))
    return ascending[::-1]


def ddim_step(
    x_t: Tensor,
    t: int,
    t_prev: int,
    eps: Tensor,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    noise: Tensor | None = None,
    pred_x0: Tensor | None = None,
) -> Tensor:
    """One DDIM step from x_t to x_{t_prev} (Song et al. 2021, eq. 12), t_prev < t (t_prev = -1: to x_0).

        x_{t_prev} = sqrt(abar_prev) * x0_pred                      (1) the predicted x_0
                   + sqrt(1 - abar_prev - sigma^2) * eps            (2) the direction pointing to x_t
                   + sigma * z                                      (3) the noise

        x0_pred = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        sigma   = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)

    with abar_t = alpha-bar_t, abar_prev = alpha-bar_{t_prev} and alpha-bar_{-1} = 1 (so sigma = 0 at
    the last step). eta = 0 is the deterministic DDIM; eta = 1 gives sigma^2 = beta-tilde when
    t_prev = t - 1, i.e. DDPM's ancestral step with the posterior variance.

    Args:
        eps: the predicted noise at (x_t, t).
        eta: how much fresh noise, >= 0 (0: none, 1: as much as DDPM).
        noise: z ~ N(0, I), needed only when sigma > 0.
        pred_x0: the predicted x_0 when already known (clipped, or from an "x0"/"v" model);
            computed from eps otherwise.
    """
    if not 0 <= t < schedule.T or not -1 <= t_prev < t:
        raise ValueError(f"need 0 <= t < T = {schedule.T} and -1 <= t_prev < t, got t={t}, t_prev={t_prev}")
    _check_eta(eta)
    abar_t = schedule.alphas_cumprod[t].item()
    abar_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    if pred_x0 is None:
        pred_x0 = (x_t - (1 - abar_t) ** 0.5 * eps) / abar_t**0.5
    sigma = eta * ((1 - abar_prev) / (1 - abar_t)) ** 0.5 * (1 - abar_t / abar_prev) ** 0.5
    direction_var = 1 - abar_prev - sigma**2
    if direction_var < -1e-6:
        raise ValueError(
            f"eta={eta} is too large at t={t} -> t_prev={t_prev}: sigma^2 = {sigma**2:.4g} exceeds "
            f"1 - alpha-bar_prev = {1 - abar_prev:.4g}; use eta <= 1"
        )

    predicted_x0_part = abar_prev**0.5 * pred_x0  # (1)
    direction_to_x_t = max(direction_var, 0.0) ** 0.5 * eps  # (2)
    if sigma == 0:
        return predicted_x0_part + direction_to_x_t
    if noise is None:
        raise ValueError(f"ddim_step with eta={eta} adds noise (sigma = {sigma:.4g}): pass noise=z ~ N(0, I)")
    return predicted_x0_part + direction_to_x_t + sigma * noise  # (3)


@torch.no_grad()
def ddim_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    steps: int,
    eta: float = 0.0,
    spacing: Spacing = "uniform",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    x_T: Tensor | None = None,  # noqa: N803
    cond: Tensor | None = None,
    guidance: float | None = None,
    uncond: Tensor | None = None,
    prediction: Prediction | None = None,
    clip_x0: bool | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12): `steps` model calls from x_T ~ N(0, I) to x_0.

    Visits `ddim_timesteps(T, steps, spacing)` (T - 1 down to 0), then steps to x_0. With eta = 0 the
    path is deterministic: the same x_T always gives the same sample, and the generator is used
    only for x_T. Noise z is drawn at each step but the last (after x_T), so with steps = T and
    eta = 1 the draws are DDPM's and the result equals `ddpm_sample(..., variance="beta_tilde")`.

    Args:
        steps: how many model calls, 1..T.
        eta: the noise scale, >= 0 (see `ddim_step`).
        spacing: "uniform" or "quadratic" (see `ddim_timesteps`).
        The others as in `ddpm_sample`; `callback` gets {"i", "t", "x", "pred_x0"} after each step,
        with x the new x_{t_prev}.
    """
    prediction, clip_x0 = resolve(model, schedule, prediction, clip_x0, "ddim_sample")
    check_prediction(prediction)
    _check_eta(eta)
    timesteps = ddim_timesteps(schedule.T, steps, spacing)  # checks steps and spacing
    x, device = start_noise(model, shape, x_T, generator, device)
    with eval_mode(model):
        for i, t in enumerate(progress_bar(timesteps, progress, "DDIM")):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            pred_x0, eps = predict(
                model, x, t, schedule, cond=cond, guidance=guidance, uncond=uncond,
                prediction=prediction, clip_x0=clip_x0,
            )
            noise = randn(shape, generator, device) if eta > 0 and t_prev >= 0 else None
            x = ddim_step(x, t, t_prev, eps, schedule, eta, noise, pred_x0=pred_x0)
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    return x


@torch.no_grad()
def ddim_invert(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    steps: int,
    spacing: Spacing = "uniform",
    cond: Tensor | None = None,
    guidance: float | None = None,
    uncond: Tensor | None = None,
    prediction: Prediction | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Tensor:
    """DDIM inversion: run the deterministic (eta = 0) update forwards, from data x0 to its noise x_T.

    Visits the timesteps of `ddim_sample` in reverse (0 up to T - 1). From x_s at time s to time t > s:

        x0_pred = (x_s - sqrt(1 - abar_s) eps) / sqrt(abar_s),   eps = model(x_s, s)
        x_t     = sqrt(abar_t) x0_pred + sqrt(1 - abar_t) eps

    The first step starts at the data itself (x0_pred = x0) with eps = model(x0, 0).

    An approximation: sampling from t to s uses eps at the noisier end (x_t, t), which is not yet
    known when inverting, so the inversion uses eps at the current point (x_s, s) instead. The two
    agree as the steps get small (or where eps barely changes along the path), so
    `ddim_sample(x_T=ddim_invert(x0, steps=S), steps=S, eta=0, clip_x0=False)` returns close to x0, closer as S
    grows (pass clip_x0=False: the inversion never clamps, while `ddim_sample` clamps image models by default).
    `cond`, `guidance` and `uncond` work as in `ddim_sample` (invert and sample with the same ones).
    The callback gets {"i", "t", "x", "pred_x0"} with x the new x_t.
    """
    prediction, _ = resolve(model, schedule, prediction, False, "ddim_invert")
    check_prediction(prediction)
    timesteps = ddim_timesteps(schedule.T, steps, spacing)[::-1]  # ascending: 0 .. T - 1
    x = x0
    with eval_mode(model):
        for i, t in enumerate(progress_bar(timesteps, progress, "DDIM inversion")):
            s = timesteps[i - 1] if i > 0 else timesteps[0]  # the time of the current x
            pred_x0, eps = predict(model, x, s, schedule, cond=cond, guidance=guidance, uncond=uncond, prediction=prediction)
            if i == 0:
                pred_x0 = x0  # still at the data: nothing to predict
            abar_t = schedule.alphas_cumprod[t].item()
            x = abar_t**0.5 * pred_x0 + (1 - abar_t) ** 0.5 * eps
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    return x


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical interpolation between two noises of shape (B, ...), one angle per sample.

        theta = arccos(<z0, z1> / (|z0| |z1|))              (over all but the batch dimension)
        slerp = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1

    Gaussian noise in many dimensions lies near a sphere of radius sqrt(d); a straight line (lerp)
    between two such points cuts inside it, giving noise of too small a norm, while slerp stays on
    the arc. alpha = 0 gives z0, alpha = 1 gives z1. Where the two are nearly parallel (or opposite)
    sin(theta) ~ 0 and the formula is unstable, so it falls back to lerp, (1 - alpha) z0 + alpha z1.

    `alpha` may be a number, or a 1-D tensor of n values: then the n interpolations are stacked along
    the batch dimension, alpha-major, shape (n * B, ...) (with B = 1: one row per alpha).
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.ndim < 1:
        raise ValueError("z0 and z1 need a batch dimension: shape (B, ...)")
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=z0.device)
    if alpha.ndim > 1:
        raise ValueError(f"alpha must be a number or a 1-D tensor, got shape {tuple(alpha.shape)}")
    if alpha.ndim == 1:
        return torch.cat([slerp(z0, z1, a) for a in alpha], dim=0)  # (n * B, ...)
    a = z0.reshape(z0.shape[0], -1).double()  # (B, d)
    b = z1.reshape(z1.shape[0], -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)  # (B,)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    nearly_parallel = sin.abs() < 1e-4
    safe_sin = torch.where(nearly_parallel, torch.ones_like(sin), sin)
    w0 = torch.where(nearly_parallel, 1 - alpha, torch.sin((1 - alpha) * theta) / safe_sin)  # (B,)
    w1 = torch.where(nearly_parallel, alpha.expand_as(sin), torch.sin(alpha * theta) / safe_sin)
    out = w0[:, None] * a + w1[:, None] * b  # (B, d)
    return out.reshape(z0.shape).to(z0.dtype)


def _check_steps(steps: int, T: int) -> None:  # noqa: N803
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer from 1 to T = {T}, got {steps!r}")


def _check_eta(eta: float) -> None:
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0 (0: deterministic DDIM, 1: DDPM-like noise), got {eta!r}")
