"""Checks for the exercises of lesson 02 (the DDPM loss): the noise-prediction loss and the ancestral step."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, seeded, tiny_schedule
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
    return check_exercise("ddpm_loss", learner, ddpm_loss, [case], mistakes=mistakes,
                          before=lambda fn: _check_uses_given(fn, model, x0, t, eps, sched),
                          after=lambda fn: _check_draws(fn, model, sched))


def _check_uses_given(learner: Callable[..., Tensor], model: Callable[..., Tensor], x0: Tensor, t: Tensor, eps: Tensor,
                      sched: Any) -> None:
    """Given t and eps, the loss must not depend on the random generator (it must use what it is given)."""
    seen: list[Tensor] = []

    def recording(x_t: Tensor, t_: Tensor) -> Tensor:
        seen.append(t_.detach().clone())
        return model(x_t, t_)

    values = []
    for seed in (11, 12):
        with seeded(seed):
            values.append(float(learner(recording, x0, sched, t=t, eps=eps)))
    if values[0] != values[1]:
        which = "t" if any(not torch.equal(s, t) for s in seen) else "eps"
        raise ExerciseError(f"ddpm_loss ignores the {which} it is given: with t and eps passed, two calls gave "
                            f"{values[0]:.4f} and {values[1]:.4f}.\n  Draw {which} only when it is None, and use the "
                            f"one passed in otherwise")


def _check_draws(learner: Callable[..., Tensor], model: Callable[..., Tensor], sched: Any) -> None:
    """Without t and eps the loss draws them: t uniform over 0..T-1 (all of them, nothing else), a finite scalar."""
    seen: list[Tensor] = []

    def recording(x_t: Tensor, t_: Tensor) -> Tensor:
        seen.append(t_.detach().clone())
        return model(x_t, t_)

    x0 = torch.rand(256, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    loss = learner(recording, x0, sched)  # check_exercise seeds the draws
    if not (isinstance(loss, Tensor) and loss.ndim == 0 and torch.isfinite(loss)):
        raise ExerciseError("ddpm_loss(model, x0, schedule) without t and eps must draw them and return a finite "
                            f"scalar; it returned {loss!r:.80}")
    drawn = torch.cat(seen) if seen else torch.empty(0, dtype=torch.long)
    if drawn.numel() != len(x0) or drawn.dtype.is_floating_point:
        raise ExerciseError(f"ddpm_loss must draw one integer t per example ({len(x0)} of them for x0 of shape "
                            f"{tuple(x0.shape)}), got {drawn.dtype} of shape {tuple(drawn.shape)}")
    lo, hi = int(drawn.min()), int(drawn.max())
    if hi >= sched.T:
        raise ExerciseError(f"ddpm_loss drew timesteps up to {hi}, but they run from 0 to T - 1 = {sched.T - 1} here "
                            f"(code counts steps from 0): torch.randint(0, T, ...) draws exactly those")
    if lo > 0 or hi < sched.T - 1:
        raise ExerciseError(f"ddpm_loss drew timesteps only from {lo} to {hi} over {len(x0)} examples; draw them "
                            f"uniformly from all of 0..T-1 = 0..{sched.T - 1}: torch.randint(0, T, ...)")


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
        Mistake("a sign: the predicted noise is subtracted, x_t - beta_t / sqrt(1 - alpha-bar_t) * eps.",
                mistake(lambda x, t, e, z, b, a, ab: (x + b / (1 - ab).sqrt() * e) / a.sqrt() + (b.sqrt() * z if t > 0 else 0))),
        Mistake("add no noise at the last step (t = 0): it would only blur the final sample.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a.sqrt() + b.sqrt() * z)),
        Mistake("add the noise sigma_t * z at every step but the last.",
                mistake(lambda x, t, e, z, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a.sqrt())),
    ]
    return check_exercise("ddpm_step", learner, ddpm_step, cases, mistakes=mistakes)
