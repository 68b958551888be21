"""Checks for the exercises of lesson 02 (the DDPM loss): the noise-prediction loss, the ancestral step and the whole
sampling loop."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import (
    CHECK_SEED,
    Case,
    ExerciseError,
    Mistake,
    check_exercise,
    seeded,
    tiny_schedule,
)
from diffedu.forward import q_sample
from diffedu.losses import ddpm_loss
from diffedu.samplers import ddpm_sample, ddpm_step

__all__ = ["ExerciseError", "check_ddpm_loss", "check_ddpm_sample_loop", "check_ddpm_step"]


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


def _stand_in(x: Tensor, t: Any) -> Tensor:
    """A fixed "noise predictor" that depends on both x and t; refuses t that is not one timestep per point."""
    if not (isinstance(t, Tensor) and t.shape == (x.shape[0],) and not t.dtype.is_floating_point):
        raise TypeError(f"the model takes t as an integer tensor of shape (B,), one timestep per point "
                        f"(here B = {x.shape[0]}): torch.full((B,), t). It got {t!r:.60}")
    return 0.4 * x + 0.2 * torch.sin(t.float()[:, None] / 3.0)


def check_ddpm_sample_loop(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 02: ddpm_sample_loop(model, schedule, x_T, generator, callback=None), against `ddpm_sample`.

    Compared: the final x, the timesteps the model saw (T-1 down to 0, one call each) and what the callback saw
    (t and x after each step). A skipped exercise continues with the library's `ddpm_sample`.
    """
    sched = tiny_schedule()
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(20))  # noqa: N806

    def run(fn: Callable[..., Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model_times: list[int] = []
        seen: list[tuple[int, Tensor]] = []

        def model(x: Tensor, t: Any) -> Tensor:
            out = _stand_in(x, t)
            model_times.append(int(t[0]))
            return out

        with seeded(CHECK_SEED):  # a loop that draws from torch's global generator gets the same numbers each run
            out = fn(model, sched, x_T.clone(), torch.Generator().manual_seed(21),
                     lambda t, x: seen.append((int(t), x.detach().clone())))
        if not isinstance(out, Tensor):
            raise ExerciseError(f"ddpm_sample_loop should return the final x (a tensor), got {type(out).__name__}")
        shown = torch.stack([x for _, x in seen]) if seen else torch.zeros(0)
        return out, torch.tensor(model_times), torch.tensor([t for t, _ in seen]), shown

    def library(model: Callable[..., Tensor], schedule: Any, x_T: Tensor, generator: torch.Generator,  # noqa: N803
                callback: Callable[[int, Tensor], Any] | None = None) -> Tensor:
        relay = (lambda info: callback(info["t"], info["x"])) if callback is not None else None
        return ddpm_sample(model, schedule, tuple(x_T.shape), x_T=x_T, generator=generator, callback=relay,
                           prediction="eps", clip_x0=False, progress=False)

    def loop(order: str = "down", *, stale_x: bool = False, noise: str = "generator", scaled_noise: bool = False,
             no_callback: bool = False) -> Callable[..., Tensor]:
        """A wrong loop (or the right one, with every switch off), for naming the mistake."""
        def compute(model, schedule, x_T, generator, callback=None):  # noqa: N803
            times = {"down": range(schedule.T - 1, -1, -1), "up": range(schedule.T),
                     "stops at 1": range(schedule.T - 1, 0, -1)}[order]
            x = x_T
            for t in times:
                eps = model(x_T if stale_x else x, torch.full((x.shape[0],), t))
                z = torch.randn(x.shape, generator=generator) if noise == "generator" else torch.randn(x.shape)
                if t == 0:
                    z = torch.zeros_like(x)
                x = ddpm_step(x, t, eps, schedule, schedule.betas[t].sqrt() * z if scaled_noise else z)
                if callback is not None and not no_callback:
                    callback(t, x)
            return x
        return lambda _: run(compute)

    compared = "(compared: the final x, the t of every model call, and the t and x the callback saw after each step)"
    cases = [Case((None,), {}, f"3 points in 2-D, a 10-step schedule, a fixed stand-in model {compared}")]
    mistakes = [
        Mistake("the loop runs forward, t = 0, 1, ..., T-1; sampling goes from the noise at t = T-1 down to t = 0: "
                "range(T - 1, -1, -1).", loop("up")),
        Mistake("the loop stops at t = 1 and misses the last step: range(T - 1, -1, -1) ends at t = 0.",
                loop("stops at 1")),
        Mistake("the model always sees x_T; call it on the current x, which each step updates.", loop(stale_x=True)),
        Mistake("the noise comes from torch's global generator; draw it with the one passed in, "
                "torch.randn(x.shape, generator=generator), so that a seed gives the same samples.",
                loop(noise="global")),
        Mistake("ddpm_step scales the noise by sigma_t itself: pass it z ~ N(0, I), not sigma_t * z.",
                loop(scaled_noise=True)),
        Mistake("the samples are right, but callback is never called: after each step, when callback is given, "
                "call callback(t, x).", loop(no_callback=True)),
    ]

    def learner_run(_: Any) -> tuple:
        return run(learner)

    def reference_run(_: Any) -> tuple:
        return run(library)

    reference_run.__module__, reference_run.__qualname__ = ddpm_sample.__module__, ddpm_sample.__qualname__
    checked = check_exercise("ddpm_sample_loop", learner_run, reference_run, cases, mistakes=mistakes,
                             fallback=reference_run)
    return learner if checked is learner_run else library
