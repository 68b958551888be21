"""Checks for the exercises of lesson 04 (training on MNIST): the EMA of the weights and the min-SNR loss weights."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, tiny_schedule
from diffedu.losses import min_snr_weight
from diffedu.train import ema_update

__all__ = ["ExerciseError", "check_ema_update", "check_min_snr_weight"]


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


def check_min_snr_weight(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 04: the min-SNR-gamma weight of each t for an eps, x0 or v network, min_snr_weight(t, schedule, gamma,
    prediction), checked against `diffedu.losses.min_snr_weight` (Hang et al. 2023)."""
    sched = tiny_schedule()
    t = torch.tensor([0, 2, 5, 9])
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    where = f"t = [0, 2, 5, 9] of a 10-step schedule (SNR {snr[0]:.0f} down to {snr[-1]:.2f})"
    cases = [Case((t, sched, 5.0, p), {}, f"{where}, gamma = 5, prediction = {p!r}") for p in ("eps", "x0", "v")]
    cases.append(Case((t, sched, 1.0, "eps"), {}, "the same t, gamma = 1, prediction = 'eps'"))

    def wrong(rule: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def compute(t_: Tensor, s: Any, gamma: float, prediction: str) -> Tensor:
            abar = s.alphas_cumprod[t_].float()
            snr = abar / (1 - abar)
            return rule(snr, snr.clamp(max=gamma), prediction, gamma)
        return compute

    right = {"eps": lambda snr, m: m / snr, "x0": lambda snr, m: m, "v": lambda snr, m: m / (snr + 1)}
    mistakes = [
        Mistake("an eps network's weight is min(SNR, gamma) / SNR: min(SNR, gamma) weighs the x0 error, and the "
                "x0 error is the eps error divided by SNR (lesson 02's weights).",
                wrong(lambda snr, m, p, g: m if p == "eps" else right[p](snr, m))),
        Mistake("for an x0 network the error is already measured in x0: its weight is min(SNR, gamma) itself.",
                wrong(lambda snr, m, p, g: m / snr if p == "x0" else right[p](snr, m))),
        Mistake("for a v network: |v error|^2 = (SNR + 1) |x0 error|^2 (lesson 02's weights), so its weight is "
                "min(SNR, gamma) / (SNR + 1), not / SNR.",
                wrong(lambda snr, m, p, g: m / snr if p == "v" else right[p](snr, m))),
        Mistake("clip the SNR from ABOVE: min(SNR, gamma), so that nearly clean steps (huge SNR) are turned down; "
                "max(SNR, gamma) turns up the noisy ones instead.",
                wrong(lambda snr, m, p, g: right[p](snr, snr.clamp(min=g)))),
        Mistake("the SNR is alpha-bar / (1 - alpha-bar) with the cumulative alpha-bar (alphas_cumprod), not one "
                "step's alpha_t.", lambda t_, s, gamma, p: right[p](
                    (s.alphas[t_] / (1 - s.alphas[t_])).float(),
                    (s.alphas[t_] / (1 - s.alphas[t_])).float().clamp(max=gamma))),
    ]
    return check_exercise("min_snr_weight", learner, min_snr_weight, cases, mistakes=mistakes)
