"""Few-step samplers for eps/x0/v models: the probability-flow ODE solved with better step sizes and higher order.

Lesson 10 wrote the probability-flow ODE of a DDPM-trained model in the variables

    y = x_t / sqrt(abar_t),   sigma = sqrt(1 - abar_t) / sqrt(abar_t),   dy/dsigma = eps(x_t, t),

where deterministic DDIM is Euler's method. The denoiser D = y - sigma eps is the predicted x_0. Every
sampler here walks a descending list of the schedule's own timesteps (so the model sees the integer t it was
trained on), with the noise level sigma of each, and a last step to sigma = 0, the data:

- `euler_sample`: y_next = y + (sigma_next - sigma) eps, one model call a step (DDIM at eta = 0).
- `heun_sample`: Karras et al. 2022 (EDM), their deterministic Algorithm 1: an Euler step, a second model call
  at its end, and the step redone with the average slope; the last step (to sigma = 0) stays Euler, so `steps`
  levels cost 2 steps - 1 calls.
- `dpm_solver_pp_2m_sample`: Lu et al. 2022 (DPM-Solver++), the multistep second-order solver. In lambda =
  -log sigma the ODE is solved exactly for a D held constant over the step,

      y_next = (sigma_next / sigma) y + (1 - sigma_next / sigma) D,

  and the second order comes from the previous step's D: D is replaced by D + (D - D_prev) / (2 r), with r the
  ratio of the previous step's length in lambda to this one's. One model call a step; the first and the last
  step are first order (there is no previous D; sigma_next = 0 makes the step return D).

All three have the signature and callback of `diffedu.samplers.ddim_sample`: they start from x_T ~ N(0, I) at
the first timestep (the course's models are trained there), call `callback({"i", "t", "x", "pred_x0"})` after
each step, and return x_0. `solver_timesteps` chooses the levels: "trailing", uniform in t and ending at
T / steps - 1 (its last call still has noise to remove); "ddim", uniform in t from T - 1 down to 0 (lesson 05's,
whose last call, at sigma_0 = 0.01, has almost nothing left to do); "karras", uniform in sigma^(1/rho)
(rho = 7, EDM's eq. 5), which packs the levels towards low noise; or "power", t = T (1 - k / steps)^rho - 1,
"trailing" bent by an exponent (rho < 1 packs the levels towards the noise and ends higher, rho > 1 towards
the data).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor, nn

from diffedu.predictions import Prediction, check_prediction
from diffedu.provenance import resolve
from diffedu.samplers import Callback, ddim_timesteps, eval_mode, predict, progress_bar, start_noise
from diffedu.schedules import NoiseSchedule

SolverSpacing = Literal["trailing", "ddim", "karras", "power"]
SOLVER_SPACINGS: tuple[str, ...] = ("trailing", "ddim", "karras", "power")
SOLVERS: tuple[str, ...] = ("euler", "heun", "dpm_solver_pp_2m")

__all__ = ["SOLVERS", "SOLVER_SPACINGS", "GaussianEps", "dpm_solver_pp_2m_sample", "dpm_solver_pp_2m_step",
           "euler_sample", "gaussian_ode_end", "heun_sample", "karras_sigmas", "nfe", "ode_sample", "schedule_sigmas",
           "sigma_of", "solver_timesteps", "timestep_of_sigma"]


def schedule_sigmas(schedule: NoiseSchedule) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1 (float64, ascending)."""
    abar = schedule.alphas_cumprod.double().cpu()
    return ((1 - abar) / abar).sqrt()


def sigma_of(schedule: NoiseSchedule, t: int) -> float:
    """The noise level sigma of timestep t; t = -1 (the data) has sigma 0."""
    if not -1 <= t < schedule.T:
        raise ValueError(f"t must lie in -1..{schedule.T - 1}, got {t}")
    return 0.0 if t < 0 else schedule_sigmas(schedule)[t].item()


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """EDM's levels (Karras et al. 2022, eq. 5): `steps` values from sigma_max down to sigma_min, evenly spaced
    in sigma^(1/rho) (float64):

        sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho

    rho = 1 is uniform in sigma; a larger rho packs the levels towards sigma_min (EDM uses 7).
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def timestep_of_sigma(schedule: NoiseSchedule, sigma: Tensor) -> Tensor:
    """The nearest integer timestep to each sigma, nearest in log sigma (sigma increases with t)."""
    log_sigmas = schedule_sigmas(schedule).log()
    return (torch.as_tensor(sigma, dtype=torch.float64).log()[..., None] - log_sigmas).abs().argmin(-1)


def solver_timesteps(schedule: NoiseSchedule, steps: int, spacing: SolverSpacing = "trailing",
                     rho: float | None = None, sigma_min: float | None = None) -> list[int]:
    """The `steps` distinct timesteps a solver visits, descending from T - 1 (pure noise); then it steps to the data.

    - "trailing": t_k = round(T (1 - k / steps)) - 1, k = 0..steps-1: uniform in t, the last at T / steps - 1
      (the "trailing" spacing of Lin et al. 2024, Table 2, and of diffusers).
    - "ddim": `diffedu.samplers.ddim_timesteps(T, steps)`, uniform from T - 1 down to 0.
    - "karras": `karras_sigmas` from sigma_{T-1} down to `sigma_min` (default sigma_0, the schedule's lowest),
      each rounded to the nearest timestep in log sigma; where two round to the same one the lower moves down.
      `rho` defaults to 7.
    - "power": t_k = round(T (1 - k / steps)^rho) - 1, k = 0..steps-1 ("trailing" is rho = 1; `rho` is required),
      made distinct as for "karras". rho < 1 spends more of the calls at high noise and makes the last call at a
      higher level (rho = 0.8, 10 steps: 999, 918, ..., 275, 157).
    """
    T = schedule.T  # noqa: N806
    if spacing not in SOLVER_SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(map(repr, SOLVER_SPACINGS))}")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer from 1 to T = {T}, got {steps!r}")
    if spacing == "ddim":
        return ddim_timesteps(T, steps)
    if spacing == "trailing":
        return [round(T * (1 - k / steps)) - 1 for k in range(steps)]
    if spacing == "power":
        if rho is None or not rho > 0:
            raise ValueError(f"spacing='power' needs its exponent rho > 0 (1 is 'trailing'; e.g. rho=0.8), got {rho}")
        rounded = [max(round(T * (1 - k / steps) ** rho) - 1, 0) for k in range(steps)]
    elif steps == 1:
        return [T - 1]
    else:
        sigmas = schedule_sigmas(schedule)
        low = sigmas[0].item() if sigma_min is None else sigma_min
        rounded = timestep_of_sigma(schedule, karras_sigmas(low, sigmas[-1].item(), steps,
                                                            7.0 if rho is None else rho)).tolist()
    out: list[int] = []
    for t in rounded:  # descending; keep distinct (moving down), then lift the tail if it ran below 0
        out.append(t if not out else min(t, out[-1] - 1))
    for k in range(len(out) - 1, -1, -1):
        out[k] = max(out[k], len(out) - 1 - k)
    return out


def dpm_solver_pp_2m_step(y: Tensor, sigma: float, sigma_next: float, d: Tensor, d_prev: Tensor | None = None,
                          sigma_prev: float | None = None) -> Tensor:
    """One DPM-Solver++(2M) step in y from `sigma` to `sigma_next` < sigma, given the denoiser D = y - sigma eps here
    and, after the first step, D_prev at the previous level `sigma_prev`:

        y_next = (sigma_next / sigma) y + (1 - sigma_next / sigma) D'
        D'     = D + (D - D_prev) / (2 r),   r = h_prev / h,
        h      = log(sigma / sigma_next),   h_prev = log(sigma_prev / sigma)

    D' = D (first order: DDIM's step) without D_prev, and at sigma_next = 0, where the step returns D itself.
    """
    ratio = sigma_next / sigma  # e^(-h)
    if d_prev is not None and sigma_next > 0:
        if sigma_prev is None:
            raise ValueError("a second-order step needs sigma_prev, the level where d_prev was predicted")
        r = math.log(sigma_prev / sigma) / math.log(sigma / sigma_next)
        d = d + (d - d_prev) / (2 * r)
    return ratio * y + (1 - ratio) * d


def nfe(solver: str, steps: int) -> int:
    """Model calls of a solver with `steps` levels: Heun makes two per step but the last."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(map(repr, SOLVERS))}")
    return 2 * steps - 1 if solver == "heun" else steps


def _levels(schedule: NoiseSchedule, steps: int | None, timesteps: Sequence[int] | None,
            spacing: SolverSpacing, rho: float | None) -> list[int]:
    if (steps is None) == (timesteps is None):
        raise ValueError("pass exactly one of steps= (with spacing=) or timesteps= (a descending list of ints)")
    if timesteps is None:
        return solver_timesteps(schedule, steps, spacing, rho)
    levels = [int(t) for t in timesteps]
    if not levels or any(not 0 <= t < schedule.T for t in levels) or any(a <= b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"timesteps must be distinct integers in 0..{schedule.T - 1}, descending; got {levels}")
    return levels


@torch.no_grad()
def ode_sample(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    solver: str = "dpm_solver_pp_2m",
    steps: int | None = None,
    timesteps: Sequence[int] | None = None,
    spacing: SolverSpacing = "trailing",
    rho: float | None = None,
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
    """Sample by solving the probability-flow ODE with `solver` ("euler", "heun" or "dpm_solver_pp_2m").

    Args:
        steps: how many noise levels to visit (model calls: `nfe(solver, steps)`), placed by `spacing`
            ("trailing", "ddim", "karras" or "power") and `rho` (see `solver_timesteps`); or
        timesteps: the levels themselves, distinct integers descending (for example another library's).
        The others as in `diffedu.samplers.ddim_sample` (guidance, prediction, clip_x0: the predicted x_0
        clamped to [-1, 1] where the model's record says so). `callback` gets {"i", "t", "x", "pred_x0"}
        after each step, with x the new x at the next level (in the model's own scale, x_t, not y).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(map(repr, SOLVERS))}")
    prediction, clip_x0 = resolve(model, schedule, prediction, clip_x0, f"{solver}_sample")
    check_prediction(prediction)
    levels = _levels(schedule, steps, timesteps, spacing, rho)
    x, device = start_noise(model, shape, x_T, generator, device)
    abar = schedule.alphas_cumprod.double().cpu()
    all_sigmas = schedule_sigmas(schedule)
    sigmas = [all_sigmas[t].item() for t in levels] + [0.0]

    def denoise(y: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(D, eps) at level k: the model sees x_t = sqrt(abar_t) y at its own timestep."""
        t = levels[k]
        return predict(model, y * abar[t].sqrt().item(), t, schedule, cond=cond, guidance=guidance, uncond=uncond,
                       prediction=prediction, clip_x0=clip_x0)

    y = x / abar[levels[0]].sqrt().item()
    previous_d: Tensor | None = None
    with eval_mode(model):
        for i in progress_bar(range(len(levels)), progress, solver):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            d, eps = denoise(y, i)
            if solver == "euler" or (solver == "heun" and sigma_next == 0):
                y = y + (sigma_next - sigma) * eps
            elif solver == "heun":
                y_euler = y + (sigma_next - sigma) * eps
                _, eps_next = denoise(y_euler, i + 1)
                y = y + (sigma_next - sigma) * 0.5 * (eps + eps_next)
            else:  # DPM-Solver++(2M)
                y = dpm_solver_pp_2m_step(y, sigma, sigma_next, d, previous_d, sigmas[i - 1] if i > 0 else None)
                previous_d = d
            t_next = levels[i + 1] if i + 1 < len(levels) else -1
            if callback is not None:
                scale = abar[t_next].sqrt().item() if t_next >= 0 else 1.0
                callback({"i": i, "t": levels[i], "x": y * scale, "pred_x0": d})
    return y


def euler_sample(model: Callable[..., Tensor], schedule: NoiseSchedule, shape: tuple[int, ...], **kwargs) -> Tensor:
    """`ode_sample` with Euler's method (deterministic DDIM on the chosen levels); see `ode_sample`."""
    return ode_sample(model, schedule, shape, solver="euler", **kwargs)


def heun_sample(model: Callable[..., Tensor], schedule: NoiseSchedule, shape: tuple[int, ...], **kwargs) -> Tensor:
    """`ode_sample` with Heun's method (EDM's deterministic Algorithm 1); see `ode_sample`."""
    return ode_sample(model, schedule, shape, solver="heun", **kwargs)


def dpm_solver_pp_2m_sample(model: Callable[..., Tensor], schedule: NoiseSchedule, shape: tuple[int, ...],
                            **kwargs) -> Tensor:
    """`ode_sample` with DPM-Solver++(2M) (Lu et al. 2022); see `ode_sample`."""
    return ode_sample(model, schedule, shape, solver="dpm_solver_pp_2m", **kwargs)


class GaussianEps(nn.Module):
    """The exact noise predictor for data x_0 ~ N(0, scale^2 I), a "model" whose ODE is solved by hand.

    For such data y = x_t / sqrt(abar) ~ N(0, (scale^2 + sigma^2) I), and E[eps | x_t] = sigma y / (scale^2 +
    sigma^2), which in x_t is sqrt(1 - abar) x_t / (abar scale^2 + 1 - abar). The probability-flow ODE
    dy/dsigma = sigma y / (scale^2 + sigma^2) then gives y proportional to sqrt(scale^2 + sigma^2): see
    `gaussian_ode_end`. `calls` counts the forward passes. Timesteps may be ints or floats (rounded).
    """

    def __init__(self, schedule: NoiseSchedule, scale: float = 0.5):
        super().__init__()
        self.register_buffer("abar", schedule.alphas_cumprod.double().clone(), persistent=False)
        self.scale = scale
        self.calls = 0

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        self.calls += 1
        abar = self.abar[t.round().long()].reshape(-1, *([1] * (x.ndim - 1)))
        return ((1 - abar).sqrt() * x.double() / (abar * self.scale**2 + 1 - abar)).to(x.dtype)


def gaussian_ode_end(x_T: Tensor, schedule: NoiseSchedule, t_start: int, scale: float = 0.5) -> Tensor:  # noqa: N803
    """Where the probability-flow ODE of `GaussianEps` takes x_T at timestep t_start: the exact x_0,

        x_0 = y_T scale / sqrt(scale^2 + sigma_T^2),   y_T = x_T / sqrt(abar_T).
    """
    sigma = sigma_of(schedule, t_start)
    abar = schedule.alphas_cumprod[t_start].double().item()
    return (x_T.double() / abar**0.5 * scale / (scale**2 + sigma**2) ** 0.5).to(x_T.dtype)
