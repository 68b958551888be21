"""Checks for the exercises of lesson 04 (training on MNIST): the EMA of the weights."""

from __future__ import annotations

from typing import Any, Callable

import torch

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise
from diffedu.train import ema_update

__all__ = ["ExerciseError", "check_ema_update"]


def check_ema_update(learner: Callable[..., Any]) -> Callable[..., Any]:
    """Lesson 04: in place, ema <- decay * ema + (1 - decay) * param for each pair of tensors."""
    g = torch.Generator().manual_seed(4)
    ema_start = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)]
    params = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)]

    def after(fn: Callable[..., Any]) -> Callable[..., tuple]:
        def run(decay: float) -> tuple:
            ema = [e.clone() for e in ema_start]
            fn(ema, params, decay)
            return tuple(ema)
        return run

    mistakes = [
        Mistake("decay and 1 - decay are swapped: the old average keeps the weight `decay` (close to 1).",
                lambda d: tuple((1 - d) * e + d * p for e, p in zip(ema_start, params))),
        Mistake("the tensors in ema_params did not change: update them in place (e.mul_(...).add_(...) or "
                "e.lerp_(p, 1 - decay)); assigning to a loop variable changes nothing.", lambda d: tuple(ema_start)),
        Mistake("the average is replaced by the weights: blend the two, decay * ema + (1 - decay) * param.",
                lambda d: tuple(params)),
    ]
    cases = [Case((0.9,), {}, "two tensors (3, 2) and (4,), decay = 0.9"),
             Case((0.5,), {}, "the same tensors, decay = 0.5")]
    run_learner = after(learner)
    checked = check_exercise("ema_update", run_learner, after(ema_update), cases, mistakes=mistakes, fallback=ema_update)
    return learner if checked is run_learner else ema_update
