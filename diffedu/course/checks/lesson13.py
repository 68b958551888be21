"""Checks for the exercises of lesson 13 (sampling in a handful of steps): EDM's noise levels, a whole Heun
sampler for an eps model on the probability-flow ODE, one DPM-Solver++(2M) update, the consistency model's
boundary-condition scalings, and the consistency student's multistep sampler.

The sampler's cases use `GaussianEps`, the exact noise predictor of Gaussian data (a closed-form function of x and
t), so a check needs no training and every mistake gives a visibly different number.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise
from diffedu.distill import consistency_sample, consistency_scalings
from diffedu.schedules import make_schedule
from diffedu.solvers import (
    GaussianEps,
    dpm_solver_pp_2m_step,
    heun_sample,
    karras_sigmas,
)

__all__ = ["ExerciseError", "check_consistency_scalings", "check_dpm_solver_pp_2m_update", "check_karras_sigmas",
           "check_my_consistency_sample", "check_my_heun_sample"]


def check_karras_sigmas(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 13: karras_sigmas(sigma_min, sigma_max, steps, rho) -> `steps` levels from sigma_max down to sigma_min."""
    cases = [
        Case((0.01, 80.0, 5, 7.0), {}, "sigma_min = 0.01, sigma_max = 80, 5 levels, rho = 7"),
        Case((1.0, 3.0, 3, 1.0), {}, "sigma_min = 1, sigma_max = 3, 3 levels, rho = 1 (so: 3, 2, 1)"),
        Case((0.002, 157.0, 8, 3.0), {}, "sigma_min = 0.002, sigma_max = 157, 8 levels, rho = 3"),
    ]

    def wrong(kind: str) -> Callable[..., Tensor]:
        def compute(sigma_min: float, sigma_max: float, steps: int, rho: float) -> Tensor:
            ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
            if kind == "ascending":
                return karras_sigmas(sigma_min, sigma_max, steps, rho).flip(0)
            if kind == "rho_inverted":
                lo, hi = sigma_min**rho, sigma_max**rho
                return (hi + ramp * (lo - hi)) ** (1 / rho)
            if kind == "linear":
                return sigma_max + ramp * (sigma_min - sigma_max)
            if kind == "steps_plus_one":
                ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)[:-1]
            lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
            return (hi + ramp * (lo - hi)) ** rho
        return compute

    mistakes = [
        Mistake("the levels run upwards; a sampler starts at sigma_max, so the first value is sigma_max.",
                wrong("ascending")),
        Mistake("the roles of rho are swapped: interpolate sigma^(1/rho) linearly, then raise to the power rho.",
                wrong("rho_inverted")),
        Mistake("the levels are evenly spaced in sigma itself; space sigma^(1/rho) evenly instead.", wrong("linear")),
        Mistake("the ramp has steps + 1 points with the last dropped, so sigma_min is never reached: use "
                "torch.linspace(0, 1, steps), whose last point is 1.", wrong("steps_plus_one")),
    ]
    return check_exercise("karras_sigmas", learner, karras_sigmas, cases, mistakes=mistakes, rtol=1e-5)


def check_my_heun_sample(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 13: my_heun_sample(model, schedule, x_T, timesteps) -> x_0, checked against `diffedu.solvers.heun_sample`.

    Also compares the timesteps the model is called at (2 per level but the last: its step to sigma = 0 is Euler's).
    """
    schedule = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(13)
    x_T = torch.randn(3, 2, generator=g)  # noqa: N806

    def run(fn: Callable[..., Tensor], timesteps: list[int]) -> tuple[Tensor, Tensor]:
        model, calls = GaussianEps(schedule), []

        def counted(x: Tensor, t: Tensor) -> Tensor:
            if not isinstance(t, Tensor) or t.shape != (x.shape[0],):
                raise ExerciseError("call the model as model(x_t, t) with t a tensor of shape (B,), one timestep "
                                    f"per sample (got t = {t!r}); torch.full((len(x),), t) makes one")
            calls.append(float(t.flatten()[0]))
            return model(x, t)

        out = fn(counted, schedule, x_T.clone(), list(timesteps))
        if not isinstance(out, Tensor):
            raise ExerciseError(f"my_heun_sample should return x_0 (a tensor), got {type(out).__name__}")
        return out, torch.tensor(calls)

    def library(model, schedule_, x, timesteps):
        return heun_sample(model, schedule_, tuple(x.shape), timesteps=timesteps, x_T=x, prediction="eps",
                           clip_x0=False, progress=False)

    def loop(*, corrector=True, mean=True, scale_in=True, scale_start=True):
        def sample(model, schedule_, x, timesteps):
            abar = schedule_.alphas_cumprod.double()
            sig = [((1 - abar[t]) / abar[t]).sqrt().item() for t in timesteps] + [0.0]
            y = x.double() / (abar[timesteps[0]].sqrt() if scale_start else 1.0)

            def eps_at(y_: Tensor, t: int) -> Tensor:
                inp = y_ * abar[t].sqrt() if scale_in else y_
                return model(inp.float(), torch.full((len(y_),), t)).double()

            for i, t in enumerate(timesteps):
                eps = eps_at(y, t)
                y_next = y + (sig[i + 1] - sig[i]) * eps
                if corrector and sig[i + 1] > 0:
                    eps_next = eps_at(y_next, timesteps[i + 1])
                    slope = 0.5 * (eps + eps_next) if mean else eps_next
                    y_next = y + (sig[i + 1] - sig[i]) * slope
                y = y_next
            return y.float()
        return sample

    cases = [Case(([999, 600, 250, 60, 0],), {},
                  "3 points in 2-D, timesteps [999, 600, 250, 60, 0], the exact eps-predictor of Gaussian data "
                  "(compared: x_0 and the timesteps of the model calls)"),
             Case(([400],), {}, "3 points, a single level, t = 400: one Euler step to sigma = 0, one model call")]
    mistakes = [
        Mistake("this is Euler's method: after the Euler guess, call the model again at the guess, at the next "
                "level's timestep, and step with the mean of the two eps.", lambda ts: run(loop(corrector=False), ts)),
        Mistake("the corrector uses only the new eps; Heun steps with the mean of the two, 0.5 (eps + eps_next).",
                lambda ts: run(loop(mean=False), ts)),
        Mistake("the model is called on y; it was trained on x_t = sqrt(abar_t) y: multiply before the call.",
                lambda ts: run(loop(scale_in=False), ts)),
        Mistake("y starts at x_T itself; y = x / sqrt(abar), so divide x_T by sqrt(abar) at the first timestep.",
                lambda ts: run(loop(scale_start=False), ts)),
    ]

    def learner_run(timesteps: list[int]) -> tuple[Tensor, Tensor]:
        return run(learner, timesteps)

    def reference_run(timesteps: list[int]) -> tuple[Tensor, Tensor]:
        return run(library, timesteps)

    reference_run.__module__, reference_run.__qualname__ = heun_sample.__module__, heun_sample.__qualname__
    checked = check_exercise("my_heun_sample", learner_run, reference_run, cases, mistakes=mistakes,
                             fallback=reference_run, atol=1e-4, rtol=1e-4)
    if checked is learner_run:
        return learner
    return library


def check_dpm_solver_pp_2m_update(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 13: dpm_solver_pp_2m_update(y, sigma, sigma_next, d, d_prev=None, sigma_prev=None) -> y at sigma_next."""
    g = torch.Generator().manual_seed(130)
    y, d, d_prev = (torch.randn(2, 3, generator=g) * k for k in (4.0, 1.0, 1.0))
    cases = [
        Case((y, 5.0, 2.0, d), {}, "the first step: y and D of shape (2, 3), sigma 5 -> 2, no D_prev yet"),
        Case((y, 2.0, 0.5, d, d_prev, 6.0), {}, "a second-order step: sigma 2 -> 0.5, D_prev predicted at sigma 6"),
        Case((y, 0.5, 0.0, d, d_prev, 2.0), {}, "the last step, sigma 0.5 -> 0, with a D_prev at sigma 2",
             nan_hint="at sigma_next = 0 the step is first order and returns D: h = log(sigma / 0) is infinite, so "
                      "skip the extrapolation there (as when there is no D_prev)."),
    ]

    def wrong(kind: str) -> Callable[..., Tensor]:
        def compute(y_, sigma, sigma_next, d_, d_prev_=None, sigma_prev=None):
            ratio = sigma_next / sigma
            if kind != "first_order" and d_prev_ is not None and sigma_next > 0:
                h, h_prev = math.log(sigma / sigma_next), math.log(sigma_prev / sigma)
                r = h / h_prev if kind == "r_inverted" else h_prev / h
                sign = -1 if kind == "sign" else 1
                d_ = d_ + sign * (d_ - d_prev_) / (2 * r)
            if kind == "ratio_inverted":
                ratio = sigma / sigma_next
            return ratio * y_ + (1 - ratio) * d_
        return compute

    mistakes = [
        Mistake("D_prev is never used: with a previous D (and sigma_next > 0) replace D by D + (D - D_prev) / (2 r).",
                wrong("first_order")),
        Mistake("r is upside down: r = h_prev / h, the previous step's length in lambda over this one's, with "
                "h = log(sigma / sigma_next) and h_prev = log(sigma_prev / sigma).", wrong("r_inverted")),
        Mistake("the extrapolation goes the wrong way: D changes by about (D - D_prev) per previous step, so add "
                "(D - D_prev) / (2 r).", wrong("sign")),
        Mistake("the ratio is upside down: e^(-h) = sigma_next / sigma, which is below 1 when sampling.",
                wrong("ratio_inverted")),
    ]
    last_step = ("at sigma_next = 0 the step is first order and returns D: h = log(sigma / 0) is infinite, so skip "
                 "the extrapolation there (as when there is no D_prev).")
    return check_exercise("dpm_solver_pp_2m_update", learner, dpm_solver_pp_2m_step, cases, mistakes=mistakes,
                          crash_hints=(("division by zero", last_step), ("math domain error", last_step)))


def check_consistency_scalings(learner: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
    """Lesson 13: consistency_scalings(sigma, sigma_min, sigma_data=0.5) -> (c_skip, c_out), Song et al. 2023's.

    First the boundary condition itself (c_skip = 1 and c_out = 0 at sigma_min, c_skip -> 0 at high noise), each
    failure named; then the values against the library's.
    """
    sigmas = torch.tensor([0.002, 0.01, 0.3, 1.0, 5.0, 157.0], dtype=torch.float64)
    cases = [Case((sigmas, 0.002), {}, "sigma = [0.002, 0.01, 0.3, 1, 5, 157], sigma_min = 0.002, sigma_data = 0.5"),
             Case((sigmas[1:], 0.01), {"sigma_data": 1.0},
                  "sigma = [0.01, 0.3, 1, 5, 157], sigma_min = 0.01, sigma_data = 1")]

    def boundary(fn: Callable[..., tuple[Tensor, Tensor]]) -> None:
        for sigma_min in (0.002, 0.01):
            out = fn(torch.tensor([sigma_min, 1e4], dtype=torch.float64), sigma_min)
            if not isinstance(out, tuple) or len(out) != 2:
                raise ExerciseError("consistency_scalings should return the pair (c_skip, c_out)")
            c_skip, c_out = (torch.as_tensor(c, dtype=torch.float64) * torch.ones(2, dtype=torch.float64) for c in out)
            if abs(c_skip[0].item() - 1) > 1e-6:
                raise ExerciseError(
                    f"the boundary condition fails: c_skip(sigma_min) = {c_skip[0].item():.6g} for sigma_min = "
                    f"{sigma_min}, so f(x, sigma_min) is not x. EDM's c_skip is 1 only at sigma = 0: measure the "
                    f"distance from sigma_min instead, (sigma - sigma_min)^2 in its denominator.")
            if abs(c_out[0].item()) > 1e-6:
                raise ExerciseError(
                    f"the boundary condition fails: c_out(sigma_min) = {c_out[0].item():.6g} for sigma_min = "
                    f"{sigma_min}, so the network still adds to f(x, sigma_min) = x. The factor sigma in EDM's c_out "
                    f"becomes (sigma - sigma_min).")
            if c_skip[1].abs().item() > 1e-3:
                raise ExerciseError(f"at sigma = 10^4, c_skip = {c_skip[1].item():.4g}: at high noise f should come "
                                    f"from the network, not from the noisy y (c_skip -> 0)")
            if c_out[1].item() < 0:
                raise ExerciseError("c_out is negative at high noise: the network's output is added, "
                                    "f = c_skip y + c_out F, with c_out -> sigma_data")

    def variant(sigma: Tensor, sigma_min: float, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
        c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
        return c_skip, sigma_data * (sigma - sigma_min) / ((sigma - sigma_min) ** 2 + sigma_data**2).sqrt()

    mistakes = [Mistake("c_out's denominator is shifted too: that also meets the boundary condition, but Song et al. "
                        "(and the shipped student) keep EDM's sqrt(sigma^2 + sigma_data^2) there.", variant)]
    return check_exercise("consistency_scalings", learner, consistency_scalings, cases, mistakes=mistakes,
                          before=boundary, atol=1e-8, rtol=1e-6)


class _ToyStudent:
    """A consistency function in closed form for the sampler's check: x_0 = 1.3 tanh(a(t) x), counted per call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.shape != (x.shape[0],):
            raise ExerciseError("call the student as student(x_t, t) with t a tensor of shape (B,), one timestep per "
                                f"sample (got t = {t!r}); torch.full((len(x),), t) makes one")
        self.calls.append(int(t[0]))
        return 1.3 * torch.tanh((1.5 + t.float() / 400).view(-1, *([1] * (x.dim() - 1))) * x)


def check_my_consistency_sample(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 13: my_consistency_sample(student, schedule, x_T, timesteps, generator) -> x_0, against the library's
    `consistency_sample` (Song et al. 2023, Algorithm 1) with the same generator; the levels called are compared too."""
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(131))  # noqa: N806

    def run(fn: Callable[..., Tensor], timesteps: list[int]) -> tuple[Tensor, Tensor]:
        student = _ToyStudent()
        out = fn(student, schedule, x_T.clone(), list(timesteps), torch.Generator().manual_seed(7))
        if not isinstance(out, Tensor):
            raise ExerciseError(f"my_consistency_sample should return x_0 (a tensor), got {type(out).__name__}")
        return out.float(), torch.tensor(student.calls, dtype=torch.float32)

    def library(student, schedule_, x, timesteps, generator):
        return consistency_sample(student, schedule_, tuple(x.shape), timesteps=timesteps, x_T=x, generator=generator)

    def loop(kind: str):
        def sample(student, schedule_, x, timesteps, generator):
            abar = schedule_.alphas_cumprod
            x0, x_t = None, x
            for i, t in enumerate(timesteps):
                if i > 0:
                    z = torch.randn(x.shape, generator=generator)
                    if kind == "old_noise":
                        z = x
                    base = x_t if kind == "noise_x" else x0
                    x_t = abar[t].sqrt() * base + (1 - abar[t]).sqrt() * z
                    if kind == "no_scale":
                        x_t = x0 + ((1 - abar[t]) / abar[t]).sqrt() * z
                x0 = student(x_t, torch.full((len(x),), t))
                x0 = x0 if kind == "no_clamp" else x0.clamp(-1, 1)
            return x_t if kind == "return_x" else x0
        return sample

    cases = [Case(([999, 749, 499, 249],), {},
                  "4 points in 3-D, timesteps [999, 749, 499, 249], a toy student x_0 = 1.3 tanh(a(t) x) and "
                  "torch.Generator().manual_seed(7) (compared: x_0 and the timesteps of the calls)"),
             Case(([999],), {}, "one call at t = 999")]
    mistakes = [
        Mistake("the noise is x_T again at every level; Song et al. draw fresh noise z ~ N(0, I) for each new level "
                "(torch.randn(x.shape, generator=generator)).", lambda ts: run(loop("old_noise"), ts)),
        Mistake("the current x_t is noised; noise the student's answer x_0 to the next level instead.",
                lambda ts: run(loop("noise_x"), ts)),
        Mistake("the predicted x_0 is not clamped to [-1, 1] (the images' range) before it is used and returned.",
                lambda ts: run(loop("no_clamp"), ts)),
        Mistake("x_0 + sigma z is y, not x_t: the student takes x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z.",
                lambda ts: run(loop("no_scale"), ts)),
        Mistake("the last x_t is returned; the sample is the student's last x_0.",
                lambda ts: run(loop("return_x"), ts)),
    ]

    def learner_run(timesteps: list[int]) -> tuple[Tensor, Tensor]:
        return run(learner, timesteps)

    def reference_run(timesteps: list[int]) -> tuple[Tensor, Tensor]:
        return run(library, timesteps)

    reference_run.__module__ = consistency_sample.__module__
    reference_run.__qualname__ = consistency_sample.__qualname__
    checked = check_exercise("my_consistency_sample", learner_run, reference_run, cases, mistakes=mistakes,
                             fallback=reference_run, atol=1e-5, rtol=1e-5)
    return learner if checked is learner_run else library
