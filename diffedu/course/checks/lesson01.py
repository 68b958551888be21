"""Checks for the exercises of lesson 01 (forward noising): the closed form q(x_t | x_0)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, tiny_schedule
from diffedu.forward import q_sample

__all__ = ["ExerciseError", "check_q_sample"]


def check_q_sample(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 01: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps, for data of any number of axes."""
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(0)

    def case(shape: tuple[int, ...], t: list[int], what: str) -> Case:
        x0 = torch.rand(*shape, generator=g) * 2 - 1
        eps = torch.randn(*shape, generator=g)
        return Case((x0, torch.tensor(t), eps, sched), {}, f"{what}, t = {t}, a 10-step schedule")

    cases = [case((2, 1, 2, 2), [2, 7], "images: x0 and eps of shape (2, 1, 2, 2)"),
             case((3, 2), [0, 4, 9], "points: x0 and eps of shape (3, 2)"),
             case((4, 1), [1, 3, 5, 8], "numbers: x0 and eps of shape (4, 1)")]

    def coef(values: Tensor, t: Tensor, x0: Tensor, shift: int = 0) -> Tensor:
        return values[(t + shift).clamp(0, sched.T - 1)].reshape(-1, *[1] * (x0.ndim - 1))

    def wrong(fn: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor], shift: int = 0) -> Callable[..., Tensor]:
        def compute(x0: Tensor, t: Tensor, eps: Tensor, s: Any) -> Tensor:
            return fn(x0, eps, coef(s.alphas_cumprod, t, x0, shift), coef(s.alphas, t, x0), s.alphas_cumprod[t])
        return compute

    mistakes = [
        Mistake("no square roots at all: use sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t), not the bare values.",
                wrong(lambda x0, e, ab, a, flat: ab * x0 + (1 - ab) * e)),
        Mistake("the signal term lacks its square root: it is sqrt(alpha-bar_t) * x0.",
                wrong(lambda x0, e, ab, a, flat: ab * x0 + (1 - ab).sqrt() * e)),
        Mistake("the noise term lacks its square root: it is sqrt(1 - alpha-bar_t) * eps.",
                wrong(lambda x0, e, ab, a, flat: ab.sqrt() * x0 + (1 - ab) * e)),
        Mistake("a sign: the noise is added, + sqrt(1 - alpha-bar_t) * eps.",
                wrong(lambda x0, e, ab, a, flat: ab.sqrt() * x0 - (1 - ab).sqrt() * e)),
        Mistake("you used alpha_t (one step) where alpha-bar_t (the cumulative product, alphas_cumprod) belongs.",
                wrong(lambda x0, e, ab, a, flat: a.sqrt() * x0 + (1 - a).sqrt() * e)),
        Mistake("x0 and eps are swapped: the signal is x0, the noise is eps.",
                wrong(lambda x0, e, ab, a, flat: ab.sqrt() * e + (1 - ab).sqrt() * x0)),
        Mistake("the noise is missing: add sqrt(1 - alpha-bar_t) * eps.", wrong(lambda x0, e, ab, a, flat: ab.sqrt() * x0)),
        Mistake("off by one step: index the schedule with t itself (code counts steps from 0).",
                wrong(lambda x0, e, ab, a, flat: ab.sqrt() * x0 + (1 - ab).sqrt() * e, shift=1)),
        Mistake("off by one step: index the schedule with t itself (code counts steps from 0).",
                wrong(lambda x0, e, ab, a, flat: ab.sqrt() * x0 + (1 - ab).sqrt() * e, shift=-1)),
        Mistake("a missing reshape: alphas_cumprod[t] has shape (B,) and lines up with the LAST axis of x0, not with "
                "the examples; reshape it to (B, 1, ..., 1), one 1 per remaining axis of x0.",
                wrong(lambda x0, e, ab, a, flat: flat.sqrt() * x0 + (1 - flat).sqrt() * e)),
        Mistake("the reshape is written for 4-D images only, (-1, 1, 1, 1): make it fit any x0 with "
                "(-1, *[1] * (x0.ndim - 1)), so that points (B, 2) and numbers (B, 1) work too.",
                wrong(lambda x0, e, ab, a, flat: flat.reshape(-1, 1, 1, 1).sqrt() * x0
                      + (1 - flat.reshape(-1, 1, 1, 1)).sqrt() * e)),
    ]
    return check_exercise("q_sample", learner, q_sample, cases, mistakes=mistakes)
