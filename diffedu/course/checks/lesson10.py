"""Checks for the exercises of lesson 10 (the ODE view and flow matching): the flow-matching loss, an Euler step,
and a whole Heun sampler.

The cases use fixed stand-in "models" (closed-form functions of x and t), so a check needs no training and
every mistake gives a visibly different number.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise
from diffedu.flow import TIME_SCALE, euler_step, flow_loss, flow_sample

__all__ = ["ExerciseError", "check_euler_step", "check_flow_loss", "check_heun_sample"]


def _stand_in(x: Tensor, t_model: Tensor) -> Tensor:
    """A fixed velocity field that depends on both x and t: v = -0.7 x + 0.3 tanh(x) + 0.5 sin(t / 300)."""
    t = t_model.float().reshape(-1, *([1] * (x.ndim - 1)))
    return -0.7 * x + 0.3 * torch.tanh(x) + 0.5 * torch.sin(t / 300.0)


def check_flow_loss(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 10: mean of (model(x_t, t * TIME_SCALE) - (eps - x0))^2 with x_t = (1 - t) x0 + t eps."""
    g = torch.Generator().manual_seed(10)
    points, noise2 = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    images, noise4 = torch.randn(2, 1, 3, 3, generator=g), torch.randn(2, 1, 3, 3, generator=g)
    t4, t2 = torch.tensor([0.1, 0.35, 0.6, 0.9]), torch.tensor([0.25, 0.8])
    cases = [
        Case((_stand_in, points, t4, noise2), {}, "4 points in 2-D, t = [0.1, 0.35, 0.6, 0.9], a fixed stand-in model"),
        Case((_stand_in, images, t2, noise4), {},
             "2 images of shape (1, 3, 3), t = [0.25, 0.8]: t must broadcast over (B, C, H, W), not only (B, D)"),
    ]

    def wrong(*, swap=False, target="right", scale=True, reduce="mean"):
        def compute(model, x0, t, eps):
            tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
            x_t = tb * x0 + (1 - tb) * eps if swap else (1 - tb) * x0 + tb * eps
            goal = {"right": eps - x0, "flipped": x0 - eps, "eps": eps, "x0": x0}[target]
            err = (model(x_t, t * TIME_SCALE if scale else t) - goal) ** 2
            if reduce == "per example":  # || . ||^2 of each example, then the mean over the batch
                return err.flatten(1).sum(1).mean()
            return err.mean() if reduce == "mean" else err.sum()
        return compute

    mistakes = [
        Mistake("the target has the wrong sign: the velocity along x_t = (1 - t) x0 + t eps is d x_t / dt = eps - x0.",
                wrong(target="flipped")),
        Mistake("the target is eps alone (that is lesson 02's target); the velocity is eps - x0.", wrong(target="eps")),
        Mistake("the target is x0; the velocity is eps - x0.", wrong(target="x0")),
        Mistake("x0 and eps are swapped in the path: at t = 0 the point is the data, x_t = (1 - t) x0 + t eps.",
                wrong(swap=True)),
        Mistake("the model must see t * TIME_SCALE (t in [0, 1] times 1000, the range its time embedding was built "
                "for), not t itself.", wrong(scale=False)),
        Mistake("take the mean of the squared errors, not the sum.", wrong(reduce="sum")),
        Mistake("the squared norm of each example, averaged over the batch, is D times too large: take the mean over "
                "all elements, as F.mse_loss does.", wrong(reduce="per example")),
    ]

    return check_exercise("flow_loss", learner, flow_loss, cases, mistakes=mistakes)


def check_euler_step(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 10: x_next = x + (t_next - t) v."""
    g = torch.Generator().manual_seed(11)
    x, v = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    cases = [
        Case((x, 0.75, 0.5, v), {}, "3 points in 2-D, from t = 0.75 to t_next = 0.5 (towards the data)"),
        Case((x, 0.2, 0.0, v), {}, "3 points in 2-D, the last step, from t = 0.2 to t_next = 0"),
    ]
    mistakes = [
        Mistake("the step goes the wrong way: t_next < t when sampling, so x + (t_next - t) v moves against v.",
                lambda x, t, t_next, v: x + (t - t_next) * v),
        Mistake("the step size is missing: scale v by (t_next - t).", lambda x, t, t_next, v: x - v),
        Mistake("the step replaces x instead of moving it: x_next = x + (t_next - t) v.",
                lambda x, t, t_next, v: (t_next - t) * v),
    ]
    return check_exercise("euler_step", learner, euler_step, cases, mistakes=mistakes)


def check_heun_sample(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 10: heun_sample(model, x_T, steps, callback=None), checked against `flow_sample(sampler="heun")`.

    Also checks the number of model calls (2 steps - 1: the last step is Euler's) and what the callback gets.
    """
    g = torch.Generator().manual_seed(12)
    x_T = torch.randn(3, 2, generator=g)  # noqa: N806

    def run(fn: Callable[..., Tensor], steps: int) -> tuple[Tensor, float, float, Tensor, Tensor]:
        calls, seen = [], []

        def counted(x: Tensor, t_model: Tensor) -> Tensor:
            calls.append(float(t_model.flatten()[0]))
            return _stand_in(x, t_model)

        out = fn(counted, x_T.clone(), steps, lambda info: seen.append(info))
        if not isinstance(out, Tensor):
            raise ExerciseError(f"heun_sample should return the final x (a tensor), got {type(out).__name__}")
        times = torch.tensor([float(info["t"]) for info in seen]) if seen else torch.zeros(0)
        try:
            pairs = [torch.stack([info["x"], info["pred_x0"]]) for info in seen]  # (2, B, ...) each
            shown = torch.stack(pairs) if pairs else torch.zeros(0)
        except (KeyError, TypeError) as err:
            raise ExerciseError(f"the callback must get a dict with 'i', 't', 'x' and 'pred_x0' tensors "
                                f"({err!r})") from err
        return out, float(len(calls)), float(len(seen)), times, shown

    def library(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any = None) -> Tensor:
        return flow_sample(model, tuple(x.shape), steps=steps, sampler="heun", x_T=x, callback=callback,
                           progress=False)

    def euler_everywhere(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any = None) -> Tensor:
        return flow_sample(model, tuple(x.shape), steps=steps, sampler="euler", x_T=x, callback=callback,
                           progress=False)

    def heun_at_the_end_too(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any = None) -> Tensor:
        return _heun(model, x, steps, callback, times=torch.linspace(1, 0, steps + 1).tolist(), euler_last=False)

    def forward_in_time(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any = None) -> Tensor:
        return _heun(model, x, steps, callback, times=torch.linspace(0, 1, steps + 1).tolist(), euler_last=True)

    def pred_from_new(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any = None) -> Tensor:
        return _heun(model, x, steps, callback, times=torch.linspace(1, 0, steps + 1).tolist(), euler_last=True,
                     pred_from_new=True)

    def no_callback(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any = None) -> Tensor:
        return library(model, x, steps)

    compared = ("(compared: the final x, the number of model calls, of callback calls, and the t, x and pred_x0 each "
                "callback saw)")
    cases = [Case((4,), {}, f"3 points in 2-D, 4 steps from t = 1 to 0, a fixed stand-in model {compared}"),
             Case((1,), {}, f"3 points in 2-D, a single step, which is Euler's: one model call {compared}")]
    mistakes = [
        Mistake("this is Euler's method: after the Euler guess, call the model again at (guess, t_next) and step with "
                "the mean of the two velocities.", lambda steps: run(euler_everywhere, steps)),
        Mistake("the last step (to t = 0) should be a plain Euler step, with no second call: 2 steps - 1 calls in all.",
                lambda steps: run(heun_at_the_end_too, steps)),
        Mistake("the loop runs from t = 0 to 1; sampling goes from the noise at t = 1 to the data at t = 0.",
                lambda steps: run(forward_in_time, steps)),
        Mistake("pred_x0 is computed from the new point; it is the guess at the start of the step: x_old - t * v.",
                lambda steps: run(pred_from_new, steps)),
        Mistake("the result is right, but callback is never called: after each step, when callback is given, call "
                "callback({'i': i, 't': t, 'x': x, 'pred_x0': x_t - t * v}).", lambda steps: run(no_callback, steps)),
    ]

    def learner_run(steps: int) -> tuple:
        return run(learner, steps)

    def reference_run(steps: int) -> tuple:
        return run(library, steps)

    reference_run.__module__, reference_run.__qualname__ = flow_sample.__module__, flow_sample.__qualname__
    checked = check_exercise("heun_sample", learner_run, reference_run, cases, mistakes=mistakes,
                             fallback=reference_run)
    if checked is learner_run:
        return learner
    return library


def _heun(model: Callable[..., Tensor], x: Tensor, steps: int, callback: Any, *, times: list[float],
          euler_last: bool, pred_from_new: bool = False) -> Tensor:
    """Heun's loop over ``times`` (a wrong answer's, for naming mistakes); Euler at the last step if ``euler_last``."""
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        v = model(x, torch.full((x.shape[0],), t * TIME_SCALE))
        x_next = x + (t_next - t) * v
        if not (euler_last and i == steps - 1):
            x_next = x + (t_next - t) * 0.5 * (v + model(x_next, torch.full((x.shape[0],), t_next * TIME_SCALE)))
        if callback is not None:
            callback({"i": i, "t": t, "x": x_next, "pred_x0": (x_next if pred_from_new else x) - t * v})
        x = x_next
    return x
