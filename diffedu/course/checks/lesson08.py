"""Checks for the exercises of lesson 08 (class conditioning and classifier-free guidance).

Same rules as `diffedu.course.checks`: a right answer is returned, a wrong one raises `ExerciseError` naming the
likely mistake, a skipped one (still raising NotImplementedError) continues with `diffedu.guidance`'s version.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise
from diffedu.guidance import cfg_combine, guided_output

__all__ = ["ExerciseError", "check_cfg_combine", "check_guided_output"]


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


def check_guided_output(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 08: classifier-free guidance in ONE model call, my_guided_output(model, x_t, t, y, null, w).

    The learner stacks the conditional and unconditional questions into a batch of 2B, calls the model once, splits
    the output and combines it; checked against `diffedu.guidance.guided_output` with a stand-in model that counts
    its calls. Skipping the half that w multiplies by zero (w = 1 or w = 0) is allowed.
    """
    g = torch.Generator().manual_seed(81)
    calls: list[int] = []

    def model(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:  # a stand-in: depends on x, t and the label
        if not isinstance(t, Tensor) or not isinstance(cond, Tensor) or t.shape != (x.shape[0],) \
                or cond.shape != (x.shape[0],):
            shapes = ", ".join(f"{name} {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}"
                               for name, v in (("x", x), ("t", t), ("cond", cond)))
            raise ValueError(f"the model takes x (N, ...), t (N,) and cond (N,), one step and one label per example; "
                             f"it got {shapes}. Double t and the labels along with x_t")
        calls.append(x.shape[0])
        return 0.3 * x + 0.01 * t.float().reshape(-1, 1, 1, 1) + 0.2 * cond.float().reshape(-1, 1, 1, 1) - 1

    x_t = torch.randn(3, 1, 2, 2, generator=g)
    t, y, null = torch.tensor([7, 500, 999]), torch.tensor([3, 0, 9]), torch.tensor(10)
    cases = [Case((model, x_t, t, y, null, 3.0), {}, "3 images of shape (1, 2, 2), labels [3, 0, 9], null label 10, "
                  "w = 3, a stand-in model"),
             Case((model, x_t, t, y, null, 0.5), {}, "the same, w = 0.5"),
             Case((model, x_t, t, y, null, 1.0), {}, "the same, w = 1 (the conditional output)"),
             Case((model, x_t, t, y, null, 0.0), {}, "the same, w = 0 (the unconditional output)")]

    def halves(x: Tensor, t_: Tensor, y_: Tensor, null_: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            out_c = 0.3 * x + 0.01 * t_.float().reshape(-1, 1, 1, 1) + 0.2 * y_.float().reshape(-1, 1, 1, 1) - 1
            out_u = 0.3 * x + 0.01 * t_.float().reshape(-1, 1, 1, 1) + 0.2 * float(null_) - 1
        return out_c, out_u

    def wrong(combine: Callable[[Tensor, Tensor, float], Tensor]) -> Callable[..., Tensor]:
        return lambda m, x, t_, y_, null_, w: combine(*halves(x, t_, y_, null_), w)

    mistakes = [
        Mistake("the halves are swapped: the output's first B rows answer the first B conditions. If the batch is "
                "cat[y, null], out[:B] is conditional and out[B:] unconditional.",
                wrong(lambda c, u, w: c + w * (u - c))),
        Mistake("both halves asked the conditional question: the second half takes the null label, once per example "
                "(torch.full_like(y, int(null)) or null.expand(B)).", wrong(lambda c, u, w: c)),
        Mistake("both halves asked the unconditional question: the first half takes the labels y.",
                wrong(lambda c, u, w: u)),
    ]

    def one_call(fn: Callable[..., Tensor]) -> None:
        calls.clear()
        fn(model, x_t, t, y, null, 3.0)
        if len(calls) > 1:
            raise ExerciseError(f"my_guided_output called the model {len(calls)} times (batches of {calls}) for one "
                                f"guided output.\n  Stack both questions into ONE batch of 2B: "
                                f"model(cat[x_t, x_t], cat[t, t], cat[y, null labels]), then split the output")
        if calls and calls[0] != 2 * x_t.shape[0]:
            raise ExerciseError(f"my_guided_output called the model on a batch of {calls[0]} for {x_t.shape[0]} "
                                f"images at w = 3; guidance needs both questions, a batch of {2 * x_t.shape[0]}")

    return check_exercise("my_guided_output", learner, guided_output, cases, mistakes=mistakes, before=one_call)
