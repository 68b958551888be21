"""Checks for the exercises of lesson 08 (class conditioning and classifier-free guidance).

Same rules as `diffedu.course.checks`: a right answer is returned, a wrong one raises `ExerciseError` naming the
likely mistake, a skipped one (still raising NotImplementedError) continues with `diffedu.guidance`'s version.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise
from diffedu.guidance import cfg_combine

__all__ = ["ExerciseError", "check_cfg_combine"]


def check_cfg_combine(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 08: eps_w = eps_uncond + w (eps_cond - eps_uncond), learner's cfg_combine(out_cond, out_uncond, w)."""
    g = torch.Generator().manual_seed(80)
    cond, uncond = torch.randn(2, 1, 3, 3, generator=g), torch.randn(2, 1, 3, 3, generator=g)
    cases = [
        Case((cond, uncond, 3.0), {}, "two random (2, 1, 3, 3) predictions, w = 3"),
        Case((cond, uncond, 0.0), {}, "the same predictions, w = 0 (should give the unconditional one)"),
        Case((cond, uncond, 1.0), {}, "the same predictions, w = 1 (should give the conditional one)"),
        Case((cond, uncond, 7.5), {}, "the same predictions, w = 7.5"),
    ]
    mistakes = [
        Mistake("cond and uncond are swapped: start from the UNconditional prediction and move towards the "
                "conditional one, eps_uncond + w * (eps_cond - eps_uncond).",
                lambda c, u, w: c + w * (u - c)),
        Mistake("the base is missing: w * (eps_cond - eps_uncond) is only the step; add it to eps_uncond.",
                lambda c, u, w: w * (c - u)),
        Mistake("that is a weighted sum, w * eps_cond + eps_uncond; the unconditional prediction must be "
                "subtracted in the step: eps_uncond + w * (eps_cond - eps_uncond).",
                lambda c, u, w: w * c + u),
        Mistake("w scales only eps_cond: w * eps_cond - eps_uncond leaves out the base eps_uncond; "
                "eps_uncond + w * (eps_cond - eps_uncond).",
                lambda c, u, w: w * c - u),
        Mistake("that is eps_cond + w * (eps_cond - eps_uncond) = (1 + w) eps_cond - w eps_uncond, the convention "
                "of Ho & Salimans' paper, where w = 0 means plain conditional. In this course w = 1 means plain "
                "conditional: start from eps_uncond, eps_uncond + w * (eps_cond - eps_uncond).",
                lambda c, u, w: c + w * (c - u)),
    ]
    return check_exercise("cfg_combine", learner, cfg_combine, cases, mistakes=mistakes)
