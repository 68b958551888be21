"""The core of the exercise checks: `check_exercise`, `Case`, `Mistake`, and the rules for skipping one.

The checks of each lesson live beside this module (`lesson01` ... `lesson09`) and are built from these parts.

Each exercise cell in a lesson defines a function; the cell after it hands that function to a check:

    q_sample = checks.check_q_sample(q_sample)

The check runs the learner's function and the library's reference on a small case and then

- returns the learner's function when it agrees (and says so);
- raises `ExerciseError` with a plain-words account when it disagrees: expected against got, on the
  small case, and the likely mistake when the answer matches a known one (a missing square root...);
- when the exercise was skipped (the body still raises NotImplementedError), says so and returns the
  library's reference, so the lesson runs on with its blanks blank.

Grading mode (DIFFEDU_GRADING=1, or `set_grading(True)`; see `diffedu.course.grading`) is strict: a
skipped exercise fails too, so an autograder such as nbgrader gives no marks for it.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from diffedu.course.grading import grading_enabled, set_grading
from diffedu.schedules import linear_beta_schedule

__all__ = ["Case", "ExerciseError", "ExerciseSkipped", "Mistake", "check_exercise", "check_module",
           "grading_enabled", "seeded", "set_grading", "tiny_schedule"]


class ExerciseError(AssertionError):
    """The learner's answer to an exercise is wrong; the message says how.

    In Jupyter (IPython) it is shown as its message alone, in red, without a traceback: the check's frames
    would only bury the message, and their source lists the anticipated mistakes as formulas, which is most of
    the answer. Plain Python shows the usual traceback. nbgrader's feedback gets the same short lines.
    """

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of the traceback: the exception's name and its message."""
        red, reset = "\x1b[1;31m", "\x1b[0m"
        first, *rest = (str(self) or "the check failed").splitlines()
        return [f"{red}{type(self).__name__}{reset}: {first}", *rest]


class ExerciseSkipped(ExerciseError):
    """In grading mode: the exercise was left blank."""


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
    before: Callable[[Callable[..., Any]], None] | None = None,
    after: Callable[[Callable[..., Any]], None] | None = None,
    crash_hints: Sequence[tuple[str, str]] = (),
) -> Callable[..., Any]:
    """Compare `learner` with `reference` on `cases`; see the module docstring for what follows.

    `fallback` is what a skipped exercise continues with, when it is not `reference` itself. `before(learner)`
    and `after(learner)` are further checks (raising `ExerciseError`), run before the cases and after they
    agree: a mistake they name beats the plain "wrong answer" (`before`), or needs a right answer first (`after`).
    `crash_hints` are (text, likely mistake) pairs: when the learner's code raises an error whose message contains
    the text, the likely mistake is added to the report.
    """
    if before is not None:
        try:
            with seeded(CHECK_SEED):
                before(learner)
        except ExerciseError:
            raise
        except Exception:  # NotImplementedError (skipped) or the learner's bug: the cases below tell it
            pass
    for case in cases:
        inputs = _tensor_inputs(learner, case)
        try:
            with seeded(CHECK_SEED):  # the same draws every run, for the learner and the reference alike
                got = learner(*case.args, **case.kwargs)
        except NotImplementedError:
            return _skipped(name, fallback or reference)
        except Exception as err:  # the learner's bug, told plainly
            hints = [f"\n  Likely mistake: {hint}" for text, hint in crash_hints if text in str(err)][:1]
            raise ExerciseError(
                f"{name} raised {type(err).__name__}: {err}\n  on the test case: {case.describe}{''.join(hints)}"
            ) from err
        now = _bound(learner, case)
        changed = [arg for arg, value in inputs if not _unchanged(value, now[arg])]
        if changed:
            raise ExerciseError(
                f"{name} changed its input {', '.join(changed)} in place (on the test case: {case.describe}).\n  "
                f"An in-place operation (x.mul_(...), x += ..., x[...] = ...) alters the caller's tensor: compute a "
                f"new tensor instead (x * a), and leave the inputs as they were")
        with seeded(CHECK_SEED):
            expected = reference(*case.args, **case.kwargs)
        problem = _compare(got, expected, atol, rtol)
        if problem is None:
            continue
        message = [f"{name} gives the wrong answer on a small case: {case.describe}", problem]
        if case.nan_hint and "the result contains NaN" in problem:  # (also "item k of the result: ...")
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
    if after is not None:
        with seeded(CHECK_SEED):
            after(learner)
    agree = "1 test case agrees" if len(cases) == 1 else f"{len(cases)} test cases agree"
    print(f"✓ {name} is correct ({agree} with diffedu's reference).")
    return learner


CHECK_SEED = 1234


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded, then restore the caller's state of it."""
    with torch.random.fork_rng(devices=[]):  # saves and restores the CPU generator only
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed, which would reseed CUDA for good
        yield


def _tensor_inputs(fn: Callable[..., Any], case: Case) -> list[tuple[str, Tensor]]:
    """(name, copy) of every tensor argument of the case, named as `fn`'s parameters where it can tell."""
    named = _bound(fn, case)
    return [(arg, value.detach().clone()) for arg, value in named.items() if isinstance(value, Tensor)]


def _bound(fn: Callable[..., Any], case: Case) -> dict[str, Any]:
    try:
        return dict(inspect.signature(fn).bind(*case.args, **case.kwargs).arguments)
    except (TypeError, ValueError):  # a signature the case does not fit: the call itself will say so
        return {**{f"argument {k}": v for k, v in enumerate(case.args)}, **case.kwargs}


def _unchanged(before: Tensor, now: Tensor) -> bool:
    return before.shape == now.shape and bool(torch.equal(before, now.detach()))


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


def tiny_schedule():
    """A 10-step linear schedule (betas 0.05 .. 0.5): small cases with visibly different coefficients."""
    return linear_beta_schedule(T=10, beta_start=0.05, beta_end=0.5)


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


def check_module(name: str, learner_cls: type, reference_cls: type,
                  setups: Sequence[tuple[tuple, dict, tuple[Tensor, ...], bool, str]],
                  wrong: Sequence[tuple[str, Callable[..., Tensor]]],
                  crash_hints: Sequence[tuple[str, str]] = ()) -> type:
    """check_exercise for an nn.Module class: each setup is (init args, init kwargs, inputs, train, describe).

    Each `wrong` is (description, fn(reference_module, *inputs)) computed with the reference's weights;
    `crash_hints` as in `check_exercise`.
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
    checked = check_exercise(name, learner_fn, reference_fn, cases, mistakes=[as_mistake(d, f) for d, f in wrong],
                             crash_hints=crash_hints)
    return reference_cls if checked is reference_fn else learner_cls
