"""Checks for the exercises of lesson 05 (DDIM): the DDIM step and the DDIM inversion loop."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, tiny_schedule
from diffedu.samplers import ddim_invert, ddim_step, ddim_timesteps, predict

__all__ = ["ExerciseError", "check_ddim_invert", "check_ddim_step"]


def check_ddim_step(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 05: x_{t_prev} = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps + sigma z (DDIM, eq. 12).

    The learner writes ddim_step(x_t, t, t_prev, eps, schedule, eta, noise), with alpha-bar_{-1} = 1.
    """
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(5)
    x_t, eps, z = (torch.randn(3, 2, generator=g) for _ in range(3))
    cases = [
        Case((x_t, 7, 3, eps, sched, 0.0, z), {}, "3 points in 2-D, t = 7 -> t_prev = 3, eta = 0, a 10-step schedule"),
        Case((x_t, 7, 3, eps, sched, 1.0, z), {}, "3 points in 2-D, t = 7 -> t_prev = 3, eta = 1"),
        Case((x_t, 2, -1, eps, sched, 0.0, z), {},
             "3 points in 2-D, the last step t = 2 -> t_prev = -1 (to x_0, where alpha-bar_{-1} = 1), eta = 0",
             nan_hint="at the last step (t_prev = -1) use alpha-bar_prev = 1: alphas_cumprod[-1] is the LAST "
                      "entry of the schedule, so 1 - alpha-bar_t / alpha-bar_prev turns negative and its square root NaN."),
        Case((x_t, 2, -1, eps, sched, 1.0, z), {},
             "3 points in 2-D, the last step t = 2 -> t_prev = -1 (to x_0, where alpha-bar_{-1} = 1), eta = 1"),
        Case((x_t, 5, 4, eps, sched, 0.5, z), {}, "3 points in 2-D, t = 5 -> t_prev = 4, eta = 0.5"),
        Case((x_t, 3, 0, eps, sched, 1.0, z), {}, "3 points in 2-D, t = 3 -> t_prev = 0 (a real step), eta = 1"),
    ]

    def variant(*, abars=None, last="one", x0_sqrt=True, sigma="right", direction="right"):
        """ddim_step with one thing changed, for naming the learner's mistake."""

        def compute(x, t, t_prev, e, s, eta, noise):
            values = (s.alphas if abars == "alphas" else s.alphas_cumprod).tolist()
            a_t = values[t]
            treated_as_x0 = (t_prev < 0 and last != "index -1") or (t_prev == 0 and last == "t_prev > 0")
            a_p = 1.0 if treated_as_x0 else values[t_prev]
            x0 = (x - (1 - a_t) ** 0.5 * e) / (a_t**0.5 if x0_sqrt else a_t)
            ratio, jump = (1 - a_p) / (1 - a_t), max(1 - a_t / a_p, 0.0)  # < 0 only with a wrong a_p
            sig = {
                "right": eta * (ratio * jump) ** 0.5,
                "no eta": (ratio * jump) ** 0.5,
                "no ratio": eta * jump**0.5,
                "no sqrt": eta * ratio * jump,
            }[sigma]
            coef = {
                "right": max(1 - a_p - sig**2, 0.0) ** 0.5,
                "no sqrt": 1 - a_p - sig**2,
                "no sigma": (1 - a_p) ** 0.5,
            }[direction]
            return a_p**0.5 * x0 + coef * e + sig * noise

        return compute

    mistakes = [
        Mistake("use alpha-bar (alphas_cumprod), not alpha_t (alphas): DDIM jumps straight from t to t_prev.",
                variant(abars="alphas")),
        Mistake("the direction pointing to x_t is sqrt(1 - alpha-bar_prev - sigma^2) * eps: it needs the square root.",
                variant(direction="no sqrt")),
        Mistake("the direction coefficient is sqrt(1 - alpha-bar_prev - sigma^2): subtract sigma^2, the share "
                "of the variance the fresh noise takes.", variant(direction="no sigma")),
        Mistake("with eta = 0 there is no noise: sigma = eta * sqrt(...) * sqrt(...) must include the factor eta.",
                variant(sigma="no eta")),
        Mistake("sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev): "
                "the first square-root factor is missing.", variant(sigma="no ratio")),
        Mistake("sigma is a standard deviation: take the square roots of both factors "
                "(eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)).",
                variant(sigma="no sqrt")),
        Mistake("at the last step (t_prev = -1) alpha-bar_prev is 1; alphas_cumprod[-1] is the LAST entry "
                "(alpha-bar_{T-1}, Python's negative index), not alpha-bar_{-1}.", variant(last="index -1")),
        Mistake("only t_prev = -1 means x_0 (alpha-bar = 1); t_prev = 0 is a real step with alpha-bar_0 < 1.",
                variant(last="t_prev > 0")),
        Mistake("the predicted x_0 divides by sqrt(alpha-bar_t), not alpha-bar_t.", variant(x0_sqrt=False)),
    ]
    return check_exercise("ddim_step", learner, ddim_step, cases, mistakes=mistakes)


def _library_invert(model: Callable[..., Tensor], schedule: Any, x0: Tensor, steps: int) -> Tensor:
    """The library's DDIM inversion with the exercise's signature (the fallback of a skipped exercise)."""
    return ddim_invert(model, schedule, x0, steps=steps, progress=False)


_library_invert.__module__, _library_invert.__qualname__ = ddim_invert.__module__, ddim_invert.__qualname__


def check_ddim_invert(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 05: the whole DDIM inversion loop, ddim_invert(model, schedule, x0, steps) -> x_T.

    Checked against `diffedu.samplers.ddim_invert` with a stand-in model on a 10-step schedule; the usual wrong
    loops (eps at the noisier end, the timesteps in sampling order, a first step that does not move, a loop that
    restarts from x0, re-noising to the current level) are named.
    """
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(6)

    def model(x: Tensor, t: Tensor) -> Tensor:  # a fixed stand-in for a network predicting eps
        if not isinstance(t, Tensor) or t.shape != (x.shape[0],):
            raise TypeError("model(x, t) takes t as an integer tensor of shape (B,), one step per example; "
                            "predict(model, x, s, schedule) builds it from an int s")
        return 0.4 * x + 0.05 * t.reshape(-1, *[1] * (x.ndim - 1)).float() - 0.2

    points = torch.randn(3, 2, generator=g)
    images = torch.rand(2, 1, 2, 2, generator=g) * 2 - 1
    cases = [Case((model, sched, points, 5), {}, "3 points in 2-D, 5 steps of a 10-step schedule, a stand-in model"),
             Case((model, sched, images, 10), {}, "2 images of shape (1, 2, 2), all 10 steps"),
             Case((model, sched, points, 1), {}, "3 points in 2-D, a single step (from the data to t = 9)")]

    def variant(*, eps_at: str = "current", order: str = "up", first: str = "data", start: str = "carry",
                level: str = "next", roots: bool = True) -> Callable[..., Tensor]:
        def compute(model_: Callable[..., Tensor], s: Any, x0: Tensor, steps: int) -> Tensor:
            timesteps = ddim_timesteps(s.T, steps)
            timesteps = timesteps[::-1] if order == "up" else timesteps
            x = x0
            for i, t in enumerate(timesteps):
                current = timesteps[i - 1] if i > 0 else timesteps[0]
                where = current if eps_at == "current" else t
                pred_x0, eps = predict(model_, x if start == "carry" else x0, where, s)
                if i == 0 and first == "data":
                    pred_x0 = x0
                abar = s.alphas_cumprod[t if level == "next" else current]
                x = (abar.sqrt() if roots else abar) * pred_x0 + ((1 - abar).sqrt() if roots else 1 - abar) * eps
            return x
        return compute

    mistakes = [
        Mistake("eps comes from the CURRENT point (x_s, s), the less noisy end of the jump: the noisier x_t is what "
                "this step computes, so the model cannot be asked there yet.", variant(eps_at="next")),
        Mistake("inversion runs the timesteps upwards, 0 ... T - 1: ddim_timesteps lists them in sampling order "
                "(T - 1 ... 0), so reverse it (timesteps[::-1]).", variant(order="down")),
        Mistake("the first step starts at the data itself, which has no noise: its x0_pred is x0 (only eps comes "
                "from the model). Treating x0 as x at the first timestep makes that step give x0 back unchanged.",
                variant(first="model")),
        Mistake("each step continues from the x the previous step made; yours asks the model at x0 every time.",
                variant(start="x0")),
        Mistake("re-noise to the NEXT level: x_t = sqrt(alpha-bar_t) x0_pred + sqrt(1 - alpha-bar_t) eps, with t the "
                "step being visited, not the current time s.", variant(level="current")),
        Mistake("the coefficients are square roots: sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t).",
                variant(roots=False)),
    ]
    return check_exercise("ddim_invert", learner, _library_invert, cases, mistakes=mistakes)
