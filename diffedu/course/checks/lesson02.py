"""Checks for the exercises of lesson 02 (the DDPM loss): the noise-prediction loss and the ancestral step."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, tiny_schedule
from diffedu.forward import q_sample
from diffedu.losses import ddpm_loss
from diffedu.samplers import ddpm_step

__all__ = ["ExerciseError", "check_ddpm_loss", "check_ddpm_step"]


def check_ddpm_loss(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 02: the mean squared error between eps and the model's prediction at x_t."""
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 2, generator=g) * 2 - 1
    eps = torch.randn(4, 2, generator=g)
    t = torch.tensor([0, 3, 6, 9])

    def model(x_t, t):  # a fixed stand-in for a network: depends on both x_t and t
        return 0.5 * x_t + 0.1 * t[:, None].float()

    x_t = q_sample(x0, t, eps, sched)
    mistakes = [
        Mistake("the target is the noise eps, not x0.", lambda *a, **k: ((model(x_t, t) - x0) ** 2).mean()),
        Mistake("the target is the noise eps, not x_t.", lambda *a, **k: ((model(x_t, t) - x_t) ** 2).mean()),
        Mistake("the model must see the noisy x_t, not the clean x0.", lambda *a, **k: ((model(x0, t) - eps) ** 2).mean()),
        Mistake("take the mean of the squared errors, not the sum.", lambda *a, **k: ((model(x_t, t) - eps) ** 2).sum()),
        Mistake("square the errors (mean squared error), not their absolute value.",
                lambda *a, **k: (model(x_t, t) - eps).abs().mean()),
    ]
    case = Case((model, x0, sched), {"t": t, "eps": eps}, "4 points in 2-D, t = [0, 3, 6, 9], a fixed stand-in model")
    checked = check_exercise("ddpm_loss", learner, ddpm_loss, [case], mistakes=mistakes)
    if checked is learner:  # t and eps left out: the function must draw them itself
        loss = learner(model, x0, sched)
        if not (isinstance(loss, Tensor) and loss.ndim == 0 and torch.isfinite(loss)):
            raise ExerciseError("ddpm_loss(model, x0, schedule) without t and eps must draw them and return a finite scalar")
    return checked


def check_ddpm_step(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 02: one ancestral step x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z."""
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(2)
    x_t, eps, z = (torch.randn(3, 2, generator=g) for _ in range(3))
    cases = [
        Case((x_t, 5, eps, sched, z), {}, "3 points in 2-D at t = 5 of a 10-step schedule"),
        Case((x_t, 0, eps, sched, z), {}, "3 points in 2-D at the last step, t = 0"),
    ]

    def mistake(fn):
        def compute(x, t, e, s, noise):
            beta, alpha, abar = s.betas[t], s.alphas[t], s.alphas_cumprod[t]
            return fn(x, t, e, noise, beta, alpha, abar)
        return compute

    mistakes = [
        Mistake("divide by sqrt(alpha_t), not alpha_t.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a + (b.sqrt() * z if t > 0 else 0))),
        Mistake("the eps coefficient is beta_t / sqrt(1 - alpha-bar_t): it needs the square root.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab) * e) / a.sqrt() + (b.sqrt() * z if t > 0 else 0))),
        Mistake("use alpha-bar_t (alphas_cumprod) in the eps coefficient, not alpha_t.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - a).sqrt() * e) / a.sqrt() + (b.sqrt() * z if t > 0 else 0))),
        Mistake("the noise is sigma_t * z with sigma_t = sqrt(beta_t): take the square root of beta_t.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a.sqrt() + (b * z if t > 0 else 0))),
        Mistake("add no noise at the last step (t = 0): it would only blur the final sample.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a.sqrt() + b.sqrt() * z)),
        Mistake("add the noise sigma_t * z at every step but the last.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a.sqrt())),
    ]
    return check_exercise("ddpm_step", learner, ddpm_step, cases, mistakes=mistakes)
