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
    nan_hint: str = ""  # the likely mistake when the learner's result holds NaN on this case


def check_exercise(
    name: str,
    learner: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[Case],
    *,
    mistakes: Sequence[Mistake] = (),
    atol: float = 1e-4,
    rtol: float = 1e-4,
    fallback: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """Compare `learner` with `reference` on `cases`; see the module docstring for what follows.

    `fallback` is what a skipped exercise continues with, when it is not `reference` itself.
    """
    for case in cases:
        try:
            got = learner(*case.args, **case.kwargs)
        except NotImplementedError:
            return _skipped(name, fallback or reference)
        except Exception as err:  # the learner's bug, told plainly
            raise ExerciseError(
                f"{name} raised {type(err).__name__}: {err}\n  on the test case: {case.describe}"
            ) from err
        expected = reference(*case.args, **case.kwargs)
        problem = _compare(got, expected, atol, rtol)
        if problem is None:
            continue
        message = [f"{name} gives the wrong answer on a small case: {case.describe}", problem]
        if case.nan_hint and problem.startswith("the result contains NaN"):
            raise ExerciseError("\n  ".join([*message, f"Likely mistake: {case.nan_hint}"]))
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


def check_ddim_step(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 05: x_{t_prev} = sqrt(abar_prev) x0_pred + sqrt(1 - abar_prev - sigma^2) eps + sigma z (DDIM, eq. 12).

    The learner writes ddim_step(x_t, t, t_prev, eps, schedule, eta, noise), with alpha-bar_{-1} = 1.
    """
    from diffedu.samplers import ddim_step

    sched = _tiny_schedule()
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


# --- Lesson 03: the U-Net's blocks ------------------------------------------------------------
# Module exercises are checked by loading the same (randomised) weights into the library's block and
# the learner's, then comparing outputs. The learner's class must keep the skeleton's submodule names.


def check_timestep_embedding(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 03: emb(t) = [sin(t w_0) .. sin(t w_{h-1}), cos(t w_0) .. cos(t w_{h-1})], w_i = 10000^(-i/h)."""
    import math

    import torch.nn.functional as F

    from diffedu.layers import timestep_embedding

    def variant(*, order="sin-cos", denominator="half", base=10000.0, sign=-1.0, pad=True):
        def compute(t, dim):
            half = dim // 2
            i = torch.arange(half, dtype=torch.float32)
            denom = {"half": half, "half-1": max(half - 1, 1), "dim": dim}[denominator]
            freqs = torch.exp(sign * math.log(base) * i / denom)  # (half,)
            angles = t.float()[:, None] * freqs[None, :]  # (B, half)
            sin, cos = torch.sin(angles), torch.cos(angles)
            if order == "sin-cos":
                emb = torch.cat([sin, cos], dim=1)
            elif order == "cos-sin":
                emb = torch.cat([cos, sin], dim=1)
            else:  # interleaved: sin(t w_0), cos(t w_0), sin(t w_1), ...
                emb = torch.stack([sin, cos], dim=2).flatten(1)
            return F.pad(emb, (0, 1)) if pad and dim % 2 else emb

        return compute

    cases = [
        Case((torch.tensor([0, 1, 7, 50, 300]), 8), {}, "t = [0, 1, 7, 50, 300], dim = 8"),
        Case((torch.tensor([0, 3, 999]), 7), {}, "t = [0, 3, 999], an odd dim = 7 (the last column stays 0)"),
    ]
    mistakes = [
        Mistake("the sin and cos halves are swapped: the first half is sin(t * w_i), the second cos(t * w_i) "
                "(so t = 0 gives half zeros, then half ones).", variant(order="cos-sin")),
        Mistake("sin and cos are interleaved (sin, cos, sin, cos, ...): put all the sines first, then all the "
                "cosines, with torch.cat([sin, cos], dim=1).", variant(order="interleaved")),
        Mistake("the frequencies divide the exponent by half - 1; use w_i = 10000 ** (-i / half), i = 0 .. half-1.",
                variant(denominator="half-1")),
        Mistake("the frequencies divide the exponent by dim; use half = dim // 2: w_i = 10000 ** (-i / half).",
                variant(denominator="dim")),
        Mistake("the frequencies grow instead of shrink: the exponent is negative, w_i = 10000 ** (-i / half).",
                variant(sign=1.0)),
        Mistake("the frequencies have the wrong base: w_i = 10000 ** (-i / half) (max_period 10000, "
                "e.g. torch.exp(-math.log(10000) * i / half)).", variant(base=math.e)),
        Mistake("the frequencies have the wrong base: w_i = 10000 ** (-i / half), not 1000 ** (-i / half).",
                variant(base=1000.0)),
        Mistake("for an odd dim, append one column of zeros (F.pad(emb, (0, 1))) so the result has dim columns.",
                variant(pad=False)),
    ]
    return check_exercise("timestep_embedding", learner, timestep_embedding, cases, mistakes=mistakes)


def _randomise_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every parameter random values (zero-initialised layers would hide mistakes behind them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and name.endswith("weight"):  # a norm's scale
                p.copy_(1 + 0.5 * noise)
            elif p.ndim == 1:  # a bias
                p.copy_(0.5 * noise)
            else:  # a weight matrix or kernel: keep activations of order 1
                p.copy_(noise / p[0].numel() ** 0.5)
    return module


@dataclass
class _ModulePair:
    """The library's block with random weights and the learner's block with the same state dict."""

    reference: torch.nn.Module
    learner: torch.nn.Module
    seed: int = 0

    def run(self, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
        # the same random state for every call, so dropout draws the same mask in both blocks
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed)
            return fn(*inputs)


def _module_pair(name: str, learner_cls: type, reference_cls: type, args: tuple, kwargs: dict,
                 *, train: bool, seed: int) -> _ModulePair:
    """Build both blocks with the same weights; NotImplementedError passes through (a skipped exercise)."""
    call = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    reference = _randomise_(reference_cls(*args, **kwargs), seed)
    try:
        learner = learner_cls(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as err:
        raise ExerciseError(f"building {name}({call}) raised {type(err).__name__}: {err}") from err
    if not isinstance(learner, torch.nn.Module):
        raise ExerciseError(f"{name}({call}) should build an nn.Module, got {type(learner).__name__}")
    try:
        learner.load_state_dict(reference.state_dict())
    except RuntimeError as err:
        raise ExerciseError(
            f"{name}({call}) does not hold the same submodules as the skeleton, so the check cannot load the "
            f"library's weights into it. Keep the skeleton's __init__ (its names and shapes) and write only "
            f"forward.\n  {err}"
        ) from err
    reference.train(train)
    learner.train(train)
    return _ModulePair(reference, learner, seed)


def _check_module(name: str, learner_cls: type, reference_cls: type,
                  setups: Sequence[tuple[tuple, dict, tuple[Tensor, ...], bool, str]],
                  wrong: Sequence[tuple[str, Callable[..., Tensor]]]) -> type:
    """check_exercise for an nn.Module class: each setup is (init args, init kwargs, inputs, train, describe).

    Each `wrong` is (description, fn(reference_module, *inputs)) computed with the reference's weights.
    Returns the learner's class when it agrees, the library's class when the exercise was skipped.
    """
    try:
        pairs = [_module_pair(name, learner_cls, reference_cls, a, k, train=train, seed=n)
                 for n, (a, k, _, train, _) in enumerate(setups)]
    except NotImplementedError:
        return _skipped(name, reference_cls)

    def learner_fn(pair: _ModulePair, *inputs: Tensor) -> Tensor:
        return pair.run(pair.learner, *inputs)

    def reference_fn(pair: _ModulePair, *inputs: Tensor) -> Tensor:
        return pair.run(pair.reference, *inputs)

    reference_fn.__module__, reference_fn.__qualname__ = reference_cls.__module__, reference_cls.__qualname__

    def as_mistake(describe: str, fn: Callable[..., Tensor]) -> Mistake:
        return Mistake(describe, lambda pair, *inputs: pair.run(lambda *xs: fn(pair.reference, *xs), *inputs))

    cases = [Case((pair, *inputs), {}, describe) for pair, (_, _, inputs, _, describe) in zip(pairs, setups)]
    checked = check_exercise(name, learner_fn, reference_fn, cases, mistakes=[as_mistake(d, f) for d, f in wrong])
    return reference_cls if checked is reference_fn else learner_cls


def check_res_block(learner_cls: type) -> type:
    """Lesson 03: h = conv1(SiLU(norm1(x))) + time_proj(SiLU(emb)); out = skip(x) + conv2(dropout(SiLU(norm2(h))))."""
    import torch.nn.functional as F

    from diffedu.layers import ResBlock

    def variant(*, time="after conv1", time_silu=True, order="norm-silu", dropout="before conv2", residual=True):
        def compute(m, x, emb):
            def act(norm, h):
                if order == "silu-norm":
                    return norm(F.silu(h))
                return norm(h) if order == "no silu" else F.silu(norm(h))

            shift = m.time_proj(F.silu(emb) if time_silu else emb)[:, :, None, None]  # (B, C_out, 1, 1)
            h = m.conv1(act(m.norm1, x))
            if time == "after conv1":
                h = h + shift
            h = act(m.norm2, h)
            if dropout == "before conv2":
                h = m.dropout(h)
            h = m.conv2(h)
            if dropout == "after conv2":
                h = m.dropout(h)
            if time == "after conv2":
                h = h + shift
            return m.skip(x) + h if residual else h

        return compute

    g = torch.Generator().manual_seed(30)
    x8, x4 = torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    emb = torch.randn(2, 6, generator=g)
    setups = [
        ((8, 8, 6), {"norm_groups": 2}, (x8, emb), False,
         "ResBlock(8, 8, time_dim=6, norm_groups=2) in eval mode, x of shape (2, 8, 5, 5), emb of shape (2, 6)"),
        ((4, 8, 6), {"norm_groups": 2}, (x4, emb), False,
         "ResBlock(4, 8, time_dim=6, norm_groups=2) in eval mode, x of shape (2, 4, 5, 5): in_channels != "
         "out_channels, so the residual path is the 1x1 conv self.skip(x)"),
        ((8, 8, 6), {"norm_groups": 2, "dropout": 0.5}, (x8, emb), True,
         "ResBlock(8, 8, time_dim=6, norm_groups=2, dropout=0.5) in training mode (dropout on; both blocks "
         "draw the same random mask)"),
    ]
    wrong = [
        ("the time embedding is never added: after conv1 add self.time_proj(F.silu(emb))[:, :, None, None], "
         "one shift per channel.", variant(time="none")),
        ("the time embedding goes into self.time_proj without a SiLU first: use self.time_proj(F.silu(emb)).",
         variant(time_silu=False)),
        ("the time embedding is added after the second conv; add it right after conv1, before norm2.",
         variant(time="after conv2")),
        ("the norm and the activation are in the wrong order: GroupNorm first, then SiLU, then the conv.",
         variant(order="silu-norm")),
        ("the SiLU after each GroupNorm is missing: conv(SiLU(GroupNorm(h))).", variant(order="no silu")),
        ("the residual connection is missing: return self.skip(x) + h, not h alone.", variant(residual=False)),
        ("the dropout is missing: apply self.dropout after the second SiLU, right before conv2.",
         variant(dropout="none")),
        ("the dropout is after conv2; apply it before, to SiLU(norm2(h)).", variant(dropout="after conv2")),
    ]
    return _check_module("ResBlock", learner_cls, ResBlock, setups, wrong)


def check_self_attention(learner_cls: type) -> type:
    """Lesson 03: out = x + proj(concat_j softmax(q_j k_j^T / sqrt(hd)) v_j), with q, k, v from qkv(norm(x))."""
    import math

    def variant(*, norm=True, residual=True, scale="once", swap_qk=False, split="ok", merge="ok",
                heads=None, softmax_dim=-1):
        def compute(m, x):
            B, C, H, W = x.shape
            nh = heads or m.num_heads
            N, hd = H * W, C // nh
            qkv = m.qkv(m.norm(x) if norm else x)  # (B, 3C, H, W)
            if split == "reshape only":  # (hd, N) read as if it were (N, hd)
                q, k, v = qkv.reshape(B, 3, nh, N, hd).unbind(1)
            elif split == "interleaved":  # heads taken as the fast-moving channel index
                q, k, v = qkv.reshape(B, 3, hd, nh, N).permute(0, 1, 3, 4, 2).unbind(1)
            else:
                q, k, v = qkv.reshape(B, 3, nh, hd, N).transpose(-1, -2).unbind(1)  # (B, nh, N, hd)
            if swap_qk:
                q, k = k, q
            scores = q @ k.transpose(-1, -2)  # (B, nh, N, N)
            scores = scores / {"once": math.sqrt(hd), "none": 1.0, "twice": hd}[scale]
            h = scores.softmax(dim=softmax_dim) @ v  # (B, nh, N, hd)
            h = h.reshape(B, C, H, W) if merge == "reshape only" else h.transpose(-1, -2).reshape(B, C, H, W)
            out = m.proj(h)
            return x + out if residual else out

        return compute

    from diffedu.layers import SelfAttention

    g = torch.Generator().manual_seed(31)
    x1, x2 = torch.randn(2, 4, 3, 4, generator=g), torch.randn(2, 8, 3, 4, generator=g)
    setups = [
        ((4,), {"num_heads": 1, "norm_groups": 2}, (x1,), False,
         "SelfAttention(4, num_heads=1, norm_groups=2), x of shape (2, 4, 3, 4): one head, 12 pixels"),
        ((8,), {"num_heads": 2, "norm_groups": 2}, (x2,), False,
         "SelfAttention(8, num_heads=2, norm_groups=2), x of shape (2, 8, 3, 4): two heads of 4 channels"),
    ]
    wrong = [
        ("the residual is missing: return x + self.proj(h), not self.proj(h).", variant(residual=False)),
        ("q, k and v must come from the normalised input: self.qkv(self.norm(x)).", variant(norm=False)),
        ("the scores are not scaled: softmax(q k^T / sqrt(hd)) with hd channels per head "
         "(F.scaled_dot_product_attention does this for you).", variant(scale="none")),
        ("the scores are scaled twice: F.scaled_dot_product_attention already divides by sqrt(hd), so do not "
         "scale q or k yourself.", variant(scale="twice")),
        ("the softmax runs over the queries; it must run over the keys, the last dimension of q k^T.",
         variant(softmax_dim=-2)),
        ("q and k are swapped: the channels of qkv are ordered [q | k | v].", variant(swap_qk=True)),
        ("the heads are ignored: split the C channels into num_heads heads of C // num_heads, shape "
         "(B, nh, H*W, hd).", variant(heads=1)),
        ("a reshape where a transpose is needed when splitting q, k, v: reshape qkv to (B, 3, nh, hd, H*W) and "
         "then transpose the last two dimensions to get (B, nh, H*W, hd).", variant(split="reshape only")),
        ("the heads are split the wrong way: head j owns the channels j*hd .. (j+1)*hd - 1 of q, k and v, "
         "so reshape to (B, 3, nh, hd, H*W), not (B, 3, hd, nh, H*W).", variant(split="interleaved")),
        ("a reshape where a transpose is needed when merging the heads: (B, nh, H*W, hd) -> transpose to "
         "(B, nh, hd, H*W) -> reshape to (B, C, H, W).", variant(merge="reshape only")),
    ]
    return _check_module("SelfAttention", learner_cls, SelfAttention, setups, wrong)


def check_depends_on_t(model: Callable[..., Tensor], x: Tensor, ts: Sequence[int] = (0, 100, 500, 999),
                       cond: Tensor | None = None, *, rtol: float = 1e-4) -> list[float]:
    """Check that model(x, t) changes with t; return the relative change ||f(x, t) - f(x, ts[0])|| / ||f(x, ts[0])||.

    Raises ExerciseError with the likely cause when the output is the same for every t.
    """
    module = model if isinstance(model, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()  # no dropout: any change must come from t
    try:
        with torch.no_grad():
            outs = [model(x, t) if cond is None else model(x, t, cond) for t in ts]
    finally:
        if module is not None:
            module.train(was_training)
    base = outs[0]
    scale = base.norm().item()
    changes = [(out - base).norm().item() / max(scale, 1e-12) for out in outs[1:]]
    if all(out.abs().max().item() == 0 for out in outs):
        raise ExerciseError(
            f"the output is exactly 0 for every t in {list(ts)}, so it cannot depend on t yet. A fresh diffedu "
            "UNet starts with its output conv (and the last conv of every block) at zero. Train it for a few "
            "steps, or perturb its weights, and check again."
        )
    if max(changes) <= rtol:
        raise ExerciseError(
            f"the output is the same for every t in {list(ts)} (largest relative change {max(changes):.2g}): the "
            "timestep does not reach the output. Check that forward passes t to the time embedding and that "
            "every ResBlock adds time_proj(SiLU(emb)). (Right after the first training step this is expected: "
            "only the output conv has moved from zero so far.)"
        )
    listed = ", ".join(f"t={t}: {c:.3g}" for t, c in zip(ts[1:], changes))
    print(f"✓ the output depends on t (relative change from t={ts[0]}: {listed}).")
    return changes


def check_ema_update(learner: Callable[..., Any]) -> Callable[..., Any]:
    """Lesson 04: in place, ema <- decay * ema + (1 - decay) * param for each pair of tensors."""
    from diffedu.train import ema_update

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
