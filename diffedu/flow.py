"""Flow matching, and the ODE view of diffusion (lesson 10).

**Rectified flow / flow matching** (Liu, Gong & Liu 2023; Lipman et al. 2023) joins each data point x0 to
a noise eps by a straight line and teaches a network the velocity along it:

    x_t = (1 - t) x0 + t eps,          t in [0, 1],  eps ~ N(0, I)           (`flow_path`)
    v   = d x_t / dt = eps - x0                                               (`flow_velocity`)
    L   = E_{x0, eps, t} || v_theta(x_t, t) - (eps - x0) ||^2                  (`flow_loss`)

The minimiser is v*(x, t) = E[eps - x0 | x_t = x], a velocity field whose ODE dx/dt = v*(x, t) carries
N(0, I) at t = 1 to the data at t = 0. Sampling integrates it backwards in t, from noise to data, with
Euler's method, Heun's or DPM-Solver++(2M) (`flow_sample`). Stable Diffusion 3 and Flux are trained this way; SD3 draws
the training times from a logit-normal (Esser et al. 2024: t = sigmoid(n), n ~ N(m, s)) and samples on a
grid shifted towards the noise (`flow_timesteps(shift=...)`).

The network is the course's U-Net, unchanged: it sees t * TIME_SCALE, the range of DDPM's integer steps.

**The ODE view of DDPM.** With sigma_t = sqrt(1 - abar_t) / sqrt(abar_t) and y = x / sqrt(abar_t) the
forward process reads y_t = x0 + sigma_t eps, and the deterministic DDIM step (eta = 0) is exactly one
Euler step of dy/dsigma = eps_theta(x, t) (Song, Meng & Ermon 2021, section 4.3): `ddim_as_euler_step`.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from diffedu.forward import check_data, check_noise
from diffedu.guidance import guided_output
from diffedu.provenance import resolve
from diffedu.samplers import Callback, eval_mode, progress_bar, start_noise
from diffedu.schedules import NoiseSchedule

__all__ = [
    "FLOW_SAMPLERS", "TIME_SAMPLINGS", "TIME_SCALE", "ddim_as_euler_step", "euler_step", "flow_loss", "flow_path",
    "flow_sample", "flow_timesteps", "flow_velocity", "nfe", "path_straightness", "pf_ode_sigma",
    "sample_flow_time", "velocity",
]

TIME_SCALE = 1000.0  # the network sees t * 1000: the range of the DDPM steps its time embedding was built for
TimeSampling = Literal["uniform", "logit_normal"]
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit_normal")
FlowSampler = Literal["euler", "heun", "dpm_solver_pp_2m"]
FLOW_SAMPLERS: tuple[str, ...] = ("euler", "heun", "dpm_solver_pp_2m")


def _as_batch_times(t: Tensor | float, x: Tensor) -> Tensor:
    """t as a (B,) float tensor on x's device, for a number or a (B,) tensor."""
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def _broadcast(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1), to multiply a batch shaped like x."""
    return t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def flow_path(x0: Tensor, t: Tensor | float, eps: Tensor) -> Tensor:
    """The point at time t on the straight line from x0 (t = 0) to eps (t = 1): (1 - t) x0 + t eps."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
    t = _broadcast(_as_batch_times(t, x0), x0)
    return (1 - t) * x0 + t * eps


def flow_velocity(x0: Tensor, eps: Tensor) -> Tensor:
    """The velocity along the line, d x_t / dt = eps - x0 (the training target)."""
    return eps - x0


def sample_flow_time(n: int, kind: TimeSampling = "logit_normal", *, mean: float = 0.0, std: float = 1.0,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """n training times in (0, 1): uniform, or logit-normal t = sigmoid(mean + std * n), n ~ N(0, 1).

    The logit-normal (SD3's default: mean 0, std 1) puts more of the training on the middle of the path,
    where the velocity is hardest to guess, and less near t = 0 and t = 1, where it is nearly known.
    """
    if kind not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {kind!r}; choose one of {', '.join(map(repr, TIME_SAMPLINGS))}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std!r}")
    gen_device = generator.device if generator is not None else (device or "cpu")
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=gen_device)
    else:
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=gen_device))
    return t.to(device) if device is not None else t


def velocity(model: Callable[..., Tensor], x: Tensor, t: Tensor | float, *, cond: Tensor | None = None,
             guidance: float | None = None, uncond: Tensor | None = None) -> Tensor:
    """The model's velocity at (x, t), t in [0, 1]: model(x, t * TIME_SCALE[, cond]), with classifier-free
    guidance when ``guidance`` is given (one batched call, as in every sampler of the course)."""
    t_model = _as_batch_times(t, x) * TIME_SCALE  # (B,)
    if guidance is not None:
        return guided_output(model, x, t_model, cond, uncond, guidance)
    return (model(x, t_model) if cond is None else model(x, t_model, cond)).float()


def flow_loss(model: Callable[..., Tensor], x0: Tensor, t: Tensor | None = None, eps: Tensor | None = None, *,
              cond: Tensor | None = None, time_sampling: TimeSampling = "logit_normal",
              generator: torch.Generator | None = None) -> Tensor:
    """The flow-matching loss: mean of || model(x_t, t * TIME_SCALE) - (eps - x0) ||^2.

    ``t`` (B,) in [0, 1] and ``eps`` (shaped like x0) are drawn from ``generator`` when not given (t by
    ``time_sampling``).
    """
    check_data(x0, "x0")
    if t is None:
        t = sample_flow_time(x0.shape[0], time_sampling, generator=generator, device=x0.device)
    if eps is None:
        gen_device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    check_noise(eps, x0)
    t = _as_batch_times(t, x0)
    if t.shape != (x0.shape[0],):
        raise ValueError(f"t must hold one time per example, shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if (t < 0).any() or (t > 1).any():
        raise ValueError(f"flow times must lie in [0, 1], got values from {t.min().item():.3g} to {t.max().item():.3g}")
    x_t = flow_path(x0, t, eps)
    t_model = t * TIME_SCALE
    output = model(x_t, t_model) if cond is None else model(x_t, t_model, cond)
    if output.shape != x0.shape:
        raise ValueError(f"the model returned shape {tuple(output.shape)}; it must match x0's {tuple(x0.shape)}")
    return F.mse_loss(output.float(), flow_velocity(x0, eps).float())


def flow_timesteps(steps: int, shift: float = 1.0) -> list[float]:
    """The times a flow sampler visits: ``steps + 1`` values from 1 (noise) down to 0 (data).

    Evenly spaced, then shifted: t -> shift t / (1 + (shift - 1) t). A shift above 1 spends more of the
    steps near the noise, where the coarse layout is decided (SD3 samples with shift 3.0 at 1024x1024).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive number (1: evenly spaced), got {shift!r}")
    even = [1 - i / steps for i in range(steps + 1)]
    return [shift * t / (1 + (shift - 1) * t) for t in even]


def euler_step(x: Tensor, t: float, t_next: float, v: Tensor) -> Tensor:
    """One Euler step of dx/dt = v from time t to t_next (t_next < t when sampling): x + (t_next - t) v."""
    return x + (t_next - t) * v


@torch.no_grad()
def flow_sample(
    model: Callable[..., Tensor],
    shape: tuple[int, ...],
    *,
    steps: int,
    sampler: FlowSampler = "euler",
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    x_T: Tensor | None = None,  # noqa: N803 (the noise at t = 1, as the other samplers name it)
    cond: Tensor | None = None,
    guidance: float | None = None,
    uncond: Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Tensor:
    """Integrate dx/dt = v_theta(x, t) from t = 1 (x_T ~ N(0, I)) to t = 0 on `flow_timesteps(steps, shift)`.

    ``sampler="euler"``: x <- x + (t_next - t) v(x, t), one model call a step.
    ``sampler="heun"``: Euler's guess, then the mean of the slopes at both ends,
    x <- x + (t_next - t) (v(x, t) + v(x_guess, t_next)) / 2, two calls a step, but the last step (to t = 0) is
    plain Euler, as in the Heun sampler of Karras et al. (2022), where the slope is undefined at sigma = 0; here
    the reason is that the network is hardly ever trained at t = 0.
    ``sampler="dpm_solver_pp_2m"``: DPM-Solver++(2M) (Lu et al. 2022) with alpha_t = 1 - t, sigma_t = t and
    lambda = log(alpha / sigma): with D = x - t v (the predicted x0),
    x <- (t_next / t) x + (1 - t_next) (1 - e^(-h)) D', h = lambda_next - lambda, where D' = D for a first-order
    step (which is Euler's step again) and D + (D - D_prev) / (2 r), r = h_prev / h, once two finite steps are
    behind (the first step, from lambda = -inf at t = 1, and the last, to t = 0, stay first order). One call a step.
    Model calls (NFE, `nfe`): steps for Euler and DPM-Solver++, 2 steps - 1 for Heun.

    The callback gets {"i", "t", "x", "pred_x0"} after each step: x at the new time and the model's
    estimate of the clean image, pred_x0 = x - t v (the end of the straight line through x).
    """
    resolve(model, None, None, False, "flow_sample")  # refuses a diffusion model
    if sampler not in FLOW_SAMPLERS:
        raise ValueError(f"unknown flow sampler {sampler!r}; choose one of {', '.join(map(repr, FLOW_SAMPLERS))}")
    times = flow_timesteps(steps, shift)  # checks steps and shift
    x, device = start_noise(model, shape, x_T, generator, device)

    def v_at(x_: Tensor, t_: float) -> Tensor:
        return velocity(model, x_, t_, cond=cond, guidance=guidance, uncond=uncond)

    previous: tuple[Tensor, float] | None = None  # DPM-Solver++: the last D and the last step's h
    with eval_mode(model):
        for i in progress_bar(range(steps), progress, f"flow {sampler}"):
            t, t_next = times[i], times[i + 1]
            v = v_at(x, t)
            pred_x0 = x - t * v
            x_next = euler_step(x, t, t_next, v)
            if sampler == "heun" and t_next > 0:
                x_next = x + (t_next - t) * 0.5 * (v + v_at(x_next, t_next))
            elif sampler == "dpm_solver_pp_2m":
                h = _flow_lambda(t_next) - _flow_lambda(t)  # inf at either end: then a first-order (Euler) step
                d = pred_x0
                if previous is not None and math.isfinite(h) and math.isfinite(previous[1]):
                    d = pred_x0 + (pred_x0 - previous[0]) / (2 * previous[1] / h)
                    x_next = (t_next / t) * x + (1 - t_next) * (1 - math.exp(-h)) * d
                previous = (pred_x0, h)
            x = x_next
            if callback is not None:
                callback({"i": i, "t": t, "x": x, "pred_x0": pred_x0})
    return x


def _flow_lambda(t: float) -> float:
    """log(alpha_t / sigma_t) = log((1 - t) / t) of the straight path: -inf at t = 1 (noise), inf at t = 0."""
    if t >= 1:
        return -math.inf
    if t <= 0:
        return math.inf
    return math.log((1 - t) / t)


def nfe(sampler: FlowSampler, steps: int) -> int:
    """Model calls of `flow_sample`: steps for Euler and DPM-Solver++, 2 steps - 1 for Heun."""
    return 2 * steps - 1 if sampler == "heun" else steps


def pf_ode_sigma(schedule: NoiseSchedule, t: int) -> float:
    """sigma_t = sqrt(1 - abar_t) / sqrt(abar_t), the noise level of DDPM's step t in the ODE's variable
    (t = -1, the data, has sigma 0)."""
    if t < 0:
        return 0.0
    abar = schedule.alphas_cumprod[t].item()
    return ((1 - abar) / abar) ** 0.5


def ddim_as_euler_step(x_t: Tensor, t: int, t_prev: int, eps: Tensor, schedule: NoiseSchedule) -> Tensor:
    """One Euler step of the probability-flow ODE dy/dsigma = eps, in y = x / sqrt(abar) and sigma, from step t
    to t_prev (-1: the data), mapped back to x:

        y_t = x_t / sqrt(abar_t),   y_prev = y_t + (sigma_prev - sigma_t) eps,   x_prev = sqrt(abar_prev) y_prev

    It equals `diffedu.samplers.ddim_step(..., eta=0)`: deterministic DDIM is Euler's method on this ODE.
    """
    abar_t = schedule.alphas_cumprod[t].item()
    abar_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    y = x_t / abar_t**0.5
    y_prev = euler_step(y, pf_ode_sigma(schedule, t), pf_ode_sigma(schedule, t_prev), eps)
    return abar_prev**0.5 * y_prev


def path_straightness(trajectory: Tensor) -> Tensor:
    """For each sample, the length of its path over the distance between its ends (1 for a straight line).

    ``trajectory`` is (S + 1, B, ...): the points a sampler visited, start and end included.
    """
    if trajectory.ndim < 2 or trajectory.shape[0] < 2:
        raise ValueError(f"trajectory must be (S + 1, B, ...) with at least 2 points, got {tuple(trajectory.shape)}")
    flat = trajectory.flatten(2).double()  # (S + 1, B, D)
    length = (flat[1:] - flat[:-1]).norm(dim=-1).sum(0)  # (B,)
    chord = (flat[-1] - flat[0]).norm(dim=-1)  # (B,)
    return length / chord.clamp_min(1e-12)
