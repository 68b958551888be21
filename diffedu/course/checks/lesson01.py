"""Checks for the exercises of lesson 01 (forward noising): the closed form q(x_t | x_0)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, tiny_schedule
from diffedu.forward import q_sample

__all__ = ["ExerciseError", "check_q_sample"]


def check_q_sample(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 01: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps."""
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 2, 2, generator=g) * 2 - 1
    eps = torch.randn(2, 1, 2, 2, generator=g)
    t = torch.tensor([2, 7])
    case = Case((x0, t, eps, sched), {}, "x0 and eps of shape (2, 1, 2, 2), t = [2, 7], a 10-step schedule")

    def coef(values, shift=0):
        return values[(t + shift).clamp(0, sched.T - 1)].view(-1, 1, 1, 1)

    abar, alpha = coef(sched.alphas_cumprod), coef(sched.alphas)
    mistakes = [
        Mistake("no square roots at all: use sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t), not the bare values.",
                lambda *a: abar * x0 + (1 - abar) * eps),
        Mistake("the signal term lacks its square root: it is sqrt(alpha-bar_t) * x0.",
                lambda *a: abar * x0 + (1 - abar).sqrt() * eps),
        Mistake("the noise term lacks its square root: it is sqrt(1 - alpha-bar_t) * eps.",
                lambda *a: abar.sqrt() * x0 + (1 - abar) * eps),
        Mistake("you used alpha_t (one step) where alpha-bar_t (the cumulative product, alphas_cumprod) belongs.",
                lambda *a: alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps),
        Mistake("x0 and eps are swapped: the signal is x0, the noise is eps.",
                lambda *a: abar.sqrt() * eps + (1 - abar).sqrt() * x0),
        Mistake("the noise is missing: add sqrt(1 - alpha-bar_t) * eps.", lambda *a: abar.sqrt() * x0),
        Mistake("off by one step: index the schedule with t itself (code counts steps from 0).",
                lambda *a: coef(sched.alphas_cumprod, 1).sqrt() * x0 + (1 - coef(sched.alphas_cumprod, 1)).sqrt() * eps),
        Mistake("off by one step: index the schedule with t itself (code counts steps from 0).",
                lambda *a: coef(sched.alphas_cumprod, -1).sqrt() * x0 + (1 - coef(sched.alphas_cumprod, -1)).sqrt() * eps),
    ]
    return check_exercise("q_sample", learner, q_sample, [case], mistakes=mistakes)
