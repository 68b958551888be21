"""Checks that follow each exercise, and the rules for skipping one.

Each exercise cell in a lesson defines a function; the cell after it hands that function to a check:

    q_sample = checks.check_q_sample(q_sample)

The check runs the learner's function and the library's reference on a small case and then

- returns the learner's function when it agrees (and says so);
- raises `ExerciseError` with a plain-words account when it disagrees: expected against got, on the
  small case, and the likely mistake when the answer matches a known one (a missing square root...);
- when the exercise was skipped (the body still raises NotImplementedError), says so and returns the
  library's reference, so the lesson runs on with its blanks blank.

Grading mode (DIFFEDU_GRADING=1, or `set_grading(True)`) is strict: a skipped exercise fails too, so
an autograder such as nbgrader gives no marks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

_grading_override: bool | None = None


class ExerciseError(AssertionError):
    """The learner's answer to an exercise is wrong; the message says how."""


class ExerciseSkipped(ExerciseError):
    """In grading mode: the exercise was left blank."""


def set_grading(enabled: bool | None) -> None:
    """Turn grading mode on or off for this process (None: follow DIFFEDU_GRADING again)."""
    global _grading_override
    _grading_override = enabled


def grading_enabled() -> bool:
    if _grading_override is not None:
        return _grading_override
    return os.environ.get("DIFFEDU_GRADING", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer: what it looks like (`describe`) and how to compute it (`compute`)."""

    describe: str
    compute: Callable[..., Any]


@dataclass(frozen=True)
class Case:
    """One small input to an exercise, with a description the learner can read."""

    args: tuple
    kwargs: dict
    describe: str


def check_exercise(
    name: str,
    learner: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[Case],
    *,
    mistakes: Sequence[Mistake] = (),
    atol: float = 1e-4,
    rtol: float = 1e-4,
) -> Callable[..., Any]:
    """Compare `learner` with `reference` on `cases`; see the module docstring for what follows."""
    for case in cases:
        try:
            got = learner(*case.args, **case.kwargs)
        except NotImplementedError:
            return _skipped(name, reference)
        except Exception as err:  # the learner's bug, told plainly
            raise ExerciseError(
                f"{name} raised {type(err).__name__}: {err}\n  on the test case: {case.describe}"
            ) from err
        expected = reference(*case.args, **case.kwargs)
        problem = _compare(got, expected, atol, rtol)
        if problem is None:
            continue
        message = [f"{name} gives the wrong answer on a small case: {case.describe}", problem]
        for mistake in mistakes:
            try:
                wrong = mistake.compute(*case.args, **case.kwargs)
            except Exception:
                continue
            if _compare(got, wrong, atol, rtol) is None:
                message.append(f"Likely mistake: {mistake.describe}")
                break
        raise ExerciseError("\n  ".join(message))
    agree = "1 test case agrees" if len(cases) == 1 else f"{len(cases)} test cases agree"
    print(f"✓ {name} is correct ({agree} with diffedu's reference).")
    return learner


def _skipped(name: str, reference: Callable[..., Any]) -> Callable[..., Any]:
    if grading_enabled():
        raise ExerciseSkipped(f"{name} is not implemented yet (it raises NotImplementedError).")
    where = f"{reference.__module__}.{getattr(reference, '__qualname__', name)}"
    print(
        f"⏭ {name} still raises NotImplementedError, so you skipped this exercise.\n"
        f"  The lesson continues with the library's reference, {where}.\n"
        "  Come back, fill in the blank and rerun this cell to check your own version."
    )
    return reference


def _compare(got: Any, expected: Any, atol: float, rtol: float) -> str | None:
    """None when `got` matches `expected`, else a description of the difference."""
    if isinstance(expected, tuple):
        if not isinstance(got, tuple) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} values, got {type(got).__name__}"
        for k, (g, e) in enumerate(zip(got, expected)):
            problem = _compare(g, e, atol, rtol)
            if problem:
                return f"item {k} of the result: {problem}"
        return None
    if isinstance(expected, Tensor):
        if not isinstance(got, Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__} ({got!r:.60})"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        g, e = got.detach().double().cpu(), expected.detach().double().cpu()
        if not torch.isfinite(g).all():
            return "the result contains NaN or infinite values"
        if torch.allclose(g, e, atol=atol, rtol=rtol):
            return None
        diff = (g - e).abs()
        return (
            f"expected {_short(e)}\n  got      {_short(g)}\n"
            f"  (largest difference {diff.max().item():.4g}, at index {_index(diff)})"
        )
    if isinstance(expected, (int, float)):
        try:
            g = float(got)
        except (TypeError, ValueError):
            return f"expected a number, got {type(got).__name__}"
        return None if abs(g - expected) <= atol + rtol * abs(expected) else f"expected {expected:.6g}, got {g:.6g}"
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def _short(x: Tensor, n: int = 6) -> str:
    flat = x.flatten()
    values = ", ".join(f"{v:.4f}" for v in flat[:n].tolist())
    return f"[{values}{', ...' if flat.numel() > n else ''}]"


def _index(diff: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))


# ---------------------------------------------------------------------------------------------
# The course's exercises. Each builds a tiny, fixed case so messages are short and repeatable.
# ---------------------------------------------------------------------------------------------


def _tiny_schedule():
    from diffedu.schedules import linear_beta_schedule

    return linear_beta_schedule(T=10, beta_start=0.05, beta_end=0.5)


def check_q_sample(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 01: x_t = sqrt(alpha-bar_t) x0 + sqrt(1 - alpha-bar_t) eps."""
    from diffedu.forward import q_sample

    sched = _tiny_schedule()
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


def check_ddpm_loss(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 02: the mean squared error between eps and the model's prediction at x_t."""
    from diffedu.forward import q_sample
    from diffedu.losses import ddpm_loss

    sched = _tiny_schedule()
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
    from diffedu.samplers import ddpm_step

    sched = _tiny_schedule()
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
