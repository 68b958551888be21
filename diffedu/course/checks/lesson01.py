"""Checks for the exercises of lesson 01 (forward noising): the closed form q(x_t | x_0), the chain run step by
step, and the cosine schedule from its f(u)."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import CHECK_SEED, Case, ExerciseError, Mistake, check_exercise, seeded, tiny_schedule
from diffedu.forward import forward_chain, q_sample
from diffedu.schedules import betas_from_alpha_bar, cosine_alpha_bar

__all__ = ["ExerciseError", "check_cosine_schedule", "check_forward_chain", "check_q_sample"]


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


def check_forward_chain(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 01: the Markov chain x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, step by step, fresh noise
    from torch.randn_like at each step; the states after the steps in `keep`, stacked in keep's order.

    Learner and reference run with torch's generator seeded alike, so a right answer draws the very same noises.
    """
    sched = tiny_schedule()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 1, 2, 2, generator=g) * 2 - 1
    points = torch.rand(4, 2, generator=g) * 2 - 1
    cases = [Case((images, sched, [0, 4, 9]), {}, "x0 of shape (3, 1, 2, 2), keep = [0, 4, 9], a 10-step schedule"),
             Case((points, sched, [6, 1]), {}, "x0 of shape (4, 2), keep = [6, 1] (in that order)"),
             Case((points, sched, [3]), {}, "the same x0, keep = [3]")]

    def chain(step: Callable[[Tensor, int, Tensor, Any], Tensor], *, fresh: bool = True, before: bool = False,
              order: Callable[[list[int]], list[int]] = list) -> Callable[..., Tensor]:
        def compute(x0: Tensor, s: Any, keep: list[int]) -> Tensor:
            with seeded(CHECK_SEED):  # the draws the learner's function made
                x, kept, eps = x0, {}, torch.randn_like(x0)
                for t in range(max(keep) + 1):
                    eps = torch.randn_like(x) if fresh and t else eps
                    new = step(x, t, eps, s)
                    kept[t], x = (x if before else new), new
            return torch.stack([kept[t] for t in order(keep)])
        return compute

    def right(x: Tensor, t: int, eps: Tensor, s: Any) -> Tensor:
        return (1 - s.betas[t]).sqrt() * x + s.betas[t].sqrt() * eps

    def predrawn(x0: Tensor, s: Any, keep: list[int]) -> Tensor:
        with seeded(CHECK_SEED):
            noises = torch.randn(max(keep) + 1, *x0.shape, dtype=x0.dtype)
        x, kept = x0, {}
        for t in range(max(keep) + 1):
            x = right(x, t, noises[t], s)
            kept[t] = x
        return torch.stack([kept[t] for t in keep])

    def jumps(x0: Tensor, s: Any, keep: list[int]) -> Tensor:
        with seeded(CHECK_SEED):
            return torch.stack([q_sample(x0, torch.full((len(x0),), t), torch.randn_like(x0), s) for t in keep])

    mistakes = [
        Mistake("one noise for every step: a step adds NEW noise, independent of all before it. Draw eps inside the "
                "loop (torch.randn_like(x)); reused, the noises add up coherently and x_t's variance runs away.",
                chain(right, fresh=False)),
        Mistake("the noise term lacks its square root: beta_t is the noise's VARIANCE; scale eps by sqrt(beta_t).",
                chain(lambda x, t, e, s: (1 - s.betas[t]).sqrt() * x + s.betas[t] * e)),
        Mistake("the signal term lacks its square root: x_{t-1} is scaled by sqrt(1 - beta_t).",
                chain(lambda x, t, e, s: (1 - s.betas[t]) * x + s.betas[t].sqrt() * e)),
        Mistake("each step used alpha-bar_t, the signal left after ALL t steps; one step keeps sqrt(1 - beta_t) of "
                "the previous x and adds sqrt(beta_t) of new noise.",
                chain(lambda x, t, e, s: s.alphas_cumprod[t].sqrt() * x + (1 - s.alphas_cumprod[t]).sqrt() * e)),
        Mistake("off by one step: keep the state AFTER applying betas[t] (the one q_sample(x0, t, ...) describes); you "
                "kept the one before it.", chain(right, before=True)),
        Mistake("the states are stacked in increasing order of t; stack them in keep's own order.",
                chain(right, order=sorted)),
        Mistake("nothing wrong with the math: the noises were drawn all at once, which is right in distribution, but "
                "the check replays torch's generator and needs one torch.randn_like(x) per step, inside the loop.",
                predrawn),
        Mistake("you jumped to each step with the closed form (q_sample); the exercise is the chain itself, one small "
                "step at a time: that is what the closed form is tested against.", jumps),
    ]
    return check_exercise("forward_chain", learner, forward_chain, cases, mistakes=mistakes, atol=1e-5, rtol=1e-5)


def check_cosine_schedule(
    alpha_bar_fn: Callable[..., Tensor], betas_fn: Callable[..., Tensor]
) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """Lesson 01: the cosine f(u) of Nichol & Dhariwal, and the betas of any schedule given by a continuous alpha-bar.

    Returns the pair to use from here on: the learner's functions where they agree with the library, the library's
    where an exercise was skipped.
    """
    u = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    cos2 = torch.cos
    f_cases = [Case((u,), {}, "u = [0, 0.1, 0.25, 0.5, 0.9, 1], s = 0.008 (the default)"),
               Case((u,), {"s": 0.2}, "the same u, s = 0.2")]
    f_mistakes = [
        Mistake("f is the cosine SQUARED: cos(...) ** 2.",
                lambda u, s=0.008: cos2((u + s) / (1 + s) * math.pi / 2)),
        Mistake("the offset s is missing from the numerator: ((u + s) / (1 + s)) * pi / 2.",
                lambda u, s=0.008: cos2(u / (1 + s) * math.pi / 2) ** 2),
        Mistake("divide (u + s) by (1 + s), so that f still reaches cos^2(pi / 2) = 0 at u = 1.",
                lambda u, s=0.008: cos2((u + s) * math.pi / 2) ** 2),
        Mistake("the angle runs to pi / 2 (a quarter turn), not pi: multiply by pi / 2.",
                lambda u, s=0.008: cos2((u + s) / (1 + s) * math.pi) ** 2),
    ]
    f_checked = check_exercise("cosine_alpha_bar", alpha_bar_fn, cosine_alpha_bar, f_cases, mistakes=f_mistakes,
                               atol=1e-7, rtol=1e-6)

    def quadratic(u: Tensor) -> Tensor:  # reaches 0 at u = 1, like the cosine: the last beta needs the clip
        return 1 - u ** 2

    def logistic(u: Tensor) -> Tensor:  # alpha-bar(0) is not 1 (it is 0.993): the betas do not care
        return torch.sigmoid(5 - 10 * u)

    b_cases = [Case((cosine_alpha_bar, 10), {}, "the library's cosine f, T = 10"),
               Case((quadratic, 6), {"max_beta": 0.9}, "alpha_bar(u) = 1 - u ** 2, T = 6, max_beta = 0.9"),
               Case((logistic, 8), {}, "alpha_bar(u) = sigmoid(5 - 10 u), T = 8")]

    def grid(T: int, points: str) -> Tensor:  # noqa: N803
        if points == "T":
            return torch.arange(T, dtype=torch.float64) / T
        if points == "linspace":
            return torch.linspace(0, 1, T, dtype=torch.float64)
        if points == "steps":
            return torch.arange(T + 1, dtype=torch.float64)
        return torch.arange(T + 1, dtype=torch.float64) / T

    def wrong(rule: Callable[[Tensor, float], Tensor], points: str = "T+1") -> Callable[..., Tensor]:
        def compute(alpha_bar: Callable[[Tensor], Tensor], T: int, max_beta: float = 0.999) -> Tensor:  # noqa: N803
            return rule(alpha_bar(grid(T, points)), max_beta)
        return compute

    def right(abar: Tensor, max_beta: float) -> Tensor:
        return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)

    b_mistakes = [
        Mistake("T betas need alpha-bar at T + 1 points, u = 0, 1/T, ..., 1 (torch.arange(T + 1) / T): the first "
                "beta compares alpha-bar after one step with alpha-bar before any.", wrong(right, "T")),
        Mistake("T betas need alpha-bar at T + 1 points, u = 0, 1/T, ..., 1 (torch.arange(T + 1) / T); "
                "torch.linspace(0, 1, T) gives only T of them.", wrong(right, "linspace")),
        Mistake("alpha_bar takes u = t / T in [0, 1], not the step number t: divide by T.", wrong(right, "steps")),
        Mistake("the last beta must be clipped to max_beta: where alpha-bar reaches 0 it is 1, a step that keeps "
                "nothing of x_{t-1} (and schedule_from_betas refuses it).",
                wrong(lambda abar, mb: 1 - abar[1:] / abar[:-1])),
        Mistake("beta_t is one minus the RATIO alpha-bar_t / alpha-bar_{t-1}, not the difference of the two.",
                wrong(lambda abar, mb: (abar[:-1] - abar[1:]).clamp(max=mb))),
        Mistake("the ratio is upside down: alpha-bar_t / alpha-bar_{t-1} (later over earlier) is below 1.",
                wrong(lambda abar, mb: (1 - abar[:-1] / abar[1:]).clamp(max=mb))),
        Mistake("beta_t is the noise of ONE step, 1 - alpha-bar_t / alpha-bar_{t-1}; 1 - alpha-bar_t is the noise "
                "of all t steps together.", wrong(lambda abar, mb: (1 - abar[1:]).clamp(max=mb))),
    ]
    b_checked = check_exercise("betas_from_alpha_bar", betas_fn, betas_from_alpha_bar, b_cases,
                               mistakes=b_mistakes, atol=1e-6, rtol=1e-5)
    return f_checked, b_checked
