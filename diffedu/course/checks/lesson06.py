"""Checks for the exercises of lesson 06 (scaling up: one training step's random draws, the learning-rate scaling
rule, a schedule shifted for larger images).

Same rules as `diffedu.course.checks`: a right answer is returned, a wrong one raises `ExerciseError` naming the
likely mistake, a skipped one (still raising NotImplementedError) continues with the library's version
(`diffedu.train.training_batch`, `diffedu.train.scale_learning_rate`, `diffedu.schedules.shift_schedule`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import CHECK_SEED, Case, ExerciseError, Mistake, check_exercise, seeded
from diffedu.schedules import NoiseSchedule, cosine_beta_schedule, make_schedule, shift_schedule
from diffedu.train import scale_learning_rate, training_batch

__all__ = ["ExerciseError", "check_scale_learning_rate", "check_shift_schedule", "check_training_batch"]


def check_training_batch(learner: Callable[..., tuple[Tensor, ...]]) -> Callable[..., tuple[Tensor, ...]]:
    """Lesson 06: one step's (x0, t, eps), drawn from the generator in train's order (idx, flips if asked, t, eps;
    unconditional training with the diffusion objective).

    Learner and reference each get a fresh generator with the same seed, so a right answer is the very batch
    `train` would draw.
    """
    g = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (7, 2, 2, 3), generator=g, dtype=torch.uint8)  # (N, C, H, W), W odd
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 255, 0  # the two ends of the pixel range
    cases = [
        Case((images, 6, 10, 0, True), {}, "uint8 images (7, 2, 2, 3), batch_size = 6, T = 10, flip = True, seed 0"),
        Case((images, 6, 10, 0, False), {}, "the same, flip = False (no flips, and no draw for them)"),
        Case((images, 3, 1000, 5, True), {}, "the same images, batch_size = 3, T = 1000, flip = True, seed 5"),
    ]

    def seeded_run(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(images: Tensor, batch_size: int, T: int, seed: int, flip: bool) -> Any:  # noqa: N803
            return fn(images, batch_size, T, torch.Generator().manual_seed(seed), flip)
        return run

    def variant(*, order: str = "ite", t_low: int = 0, flips_always: bool = False, global_noise: bool = False,
                scale: Callable[[Tensor], Tensor] = lambda x: x.float() / 127.5 - 1,
                mirror: Callable[[Tensor, Tensor], Tensor] = lambda x, f: torch.where(f[:, None, None, None],
                                                                                     x.flip(-1), x),
                replacement: bool = True) -> Callable[..., Any]:
        def run(imgs: Tensor, batch_size: int, T: int, seed: int, flip: bool) -> Any:  # noqa: N803
            gen = torch.Generator().manual_seed(seed)
            drawn: dict[str, Tensor | None] = {"f": None}
            for what in order:
                if what == "i":
                    drawn["i"] = (torch.randint(0, len(imgs), (batch_size,), generator=gen) if replacement
                                  else torch.randperm(len(imgs), generator=gen)[:batch_size])
                    if flip or flips_always:
                        drawn["f"] = torch.rand(batch_size, generator=gen) < 0.5
                elif what == "t":
                    drawn["t"] = torch.randint(t_low, T + t_low, (batch_size,), generator=gen)
                else:
                    shape = (batch_size, *imgs.shape[1:])
                    if global_noise:  # check_exercise seeds torch's global generator for the learner's call
                        with seeded(CHECK_SEED):
                            drawn["e"] = torch.randn(shape)
                    else:
                        drawn["e"] = torch.randn(shape, generator=gen)
            x = imgs[drawn["i"]]
            if flip:
                x = mirror(x, drawn["f"])
            return scale(x), drawn["t"], drawn["e"]
        return run

    mistakes = [
        Mistake("the noise is not drawn from `generator` (torch.randn_like uses torch's global generator): pass "
                "generator=generator to every draw, or the same seed will not give the same batch.",
                variant(global_noise=True)),
        Mistake("t runs from 0 to T - 1 in code (betas[0] is the first step): torch.randint(0, T, ...).",
                variant(t_low=1)),
        Mistake("the flip mask is drawn even when flip is False: that extra draw moves every later number (t, eps) "
                "away from train's. Draw it only if flip.", variant(flips_always=True)),
        Mistake("t is drawn before the indices: draw in train's order, idx, flips, t, eps, so the same seed gives "
                "train's batch.", variant(order="tie")),
        Mistake("the noise is drawn before t: draw in train's order, idx, flips, t, eps.", variant(order="iet")),
        Mistake("the indices are drawn without replacement (randperm); train draws them with replacement: "
                "torch.randint(0, N, (batch_size,)).", variant(replacement=False)),
        Mistake("the pixels are scaled to [0, 1]; diffusion works in [-1, 1]: x / 127.5 - 1.",
                variant(scale=lambda x: x.float() / 255)),
        Mistake("dividing by 128 maps 255 to 0.992, not 1; divide by 127.5 (= 255 / 2): x / 127.5 - 1.",
                variant(scale=lambda x: x.float() / 128 - 1)),
        Mistake("x * 2 on uint8 pixels overflows (it wraps around above 255): convert to float first, "
                "x.float() / 127.5 - 1.", variant(scale=lambda x: (x * 2).float() / 255 - 1)),
        Mistake("the images are flipped upside down (dim -2, H); a horizontal flip mirrors the width, the last "
                "axis: x.flip(-1).", variant(mirror=lambda x, f: torch.where(f[:, None, None, None], x.flip(-2), x))),
        Mistake("every image is mirrored; only those where the mask is True should be: torch.where(mask[:, None, "
                "None, None], x.flip(-1), x).", variant(mirror=lambda x, f: x.flip(-1))),
        Mistake("the images where the mask is False are the mirrored ones: the mask is inverted.",
                variant(mirror=lambda x, f: torch.where(f[:, None, None, None], x, x.flip(-1)))),
        Mistake("no image is mirrored: apply the flips where the mask is True.", variant(mirror=lambda x, f: x)),
        Mistake("the batch is flipped along the batch axis (dim 0, the order of the images), not mirrored: flip the "
                "last axis, W.", variant(mirror=lambda x, f: torch.where(f[:, None, None, None], x.flip(0), x))),
    ]
    learner_run, reference_run = seeded_run(learner), seeded_run(training_batch)
    reference_run.__module__, reference_run.__qualname__ = training_batch.__module__, training_batch.__qualname__
    checked = check_exercise("training_batch", learner_run, reference_run, cases, mistakes=mistakes,
                             atol=1e-6, rtol=1e-6)
    return learner if checked is learner_run else training_batch


def check_scale_learning_rate(learner: Callable[..., float]) -> Callable[..., float]:
    """Lesson 06: lr * k (linear) or lr * sqrt(k) (sqrt), k = batch_size / base_batch_size."""
    cases = [
        Case((1e-3, 512, 128, "sqrt"), {}, "lr = 1e-3 at batch 128, scaled to batch 512 by the sqrt rule"),
        Case((1e-3, 512, 128, "linear"), {}, "the same, by the linear rule"),
        Case((2e-4, 64, 256, "sqrt"), {}, "lr = 2e-4 at batch 256, scaled DOWN to batch 64 by the sqrt rule"),
        Case((2e-4, 64, 256, "linear"), {}, "the same, by the linear rule"),
    ]
    mistakes = [
        Mistake("the ratio is upside down: k = batch_size / base_batch_size (a larger batch, a larger lr).",
                lambda lr, b, b0, rule: lr * ((b0 / b) if rule == "linear" else math.sqrt(b0 / b))),
        Mistake("the two rules are swapped: linear multiplies by k, sqrt by sqrt(k).",
                lambda lr, b, b0, rule: lr * (math.sqrt(b / b0) if rule == "linear" else b / b0)),
        Mistake("both rules give lr * k: the sqrt rule multiplies by sqrt(k).", lambda lr, b, b0, rule: lr * b / b0),
        Mistake("both rules give lr * sqrt(k): the linear rule multiplies by k itself.",
                lambda lr, b, b0, rule: lr * math.sqrt(b / b0)),
        Mistake("the lr is not scaled at all.", lambda lr, b, b0, rule: lr),
    ]
    return check_exercise("scale_learning_rate", learner, scale_learning_rate, cases, mistakes=mistakes,
                          atol=1e-12, rtol=1e-9)


def check_shift_schedule(learner: Callable[..., Any]) -> Callable[..., Any]:
    """Lesson 06: shift_schedule(schedule, factor) -> a NoiseSchedule whose SNR at each t is the given one's / factor^2.

    Compared by the alpha-bar of the schedules returned.
    """
    cases = [Case((make_schedule("linear", 50), 2.0), {}, "the linear schedule with T = 50, factor = 2"),
             Case((cosine_beta_schedule(20), 4.0), {}, "the cosine schedule with T = 20, factor = 4"),
             Case((make_schedule("linear", 10), 0.5), {}, "the linear schedule with T = 10, factor = 0.5 (less noise)")]

    def alpha_bar_of(fn: Callable[..., Any]) -> Callable[..., Tensor]:
        def run(schedule: Any, factor: float) -> Tensor:
            out = fn(schedule, factor)
            if not isinstance(out, NoiseSchedule):
                raise TypeError(f"shift_schedule should return a NoiseSchedule (schedule_from_betas(betas) builds "
                                f"one), got {type(out).__name__}")
            return out.alphas_cumprod
        return run

    def wrong(rule: Callable[[Tensor, float], Tensor], first: bool = True) -> Callable[..., Tensor]:
        def compute(schedule: Any, factor: float) -> Tensor:
            new = rule(schedule.alphas_cumprod.double(), factor)
            before = torch.cat([torch.ones(1, dtype=torch.float64), new[:-1]]) if first else new[:-1]
            betas = (1 - (new if first else new[1:]) / before).clamp(min=1e-8, max=0.999)
            return torch.cumprod(1 - betas, 0).float()
        return compute

    def snr_rule(divide_by: Callable[[float], float]) -> Callable[[Tensor, float], Tensor]:
        def rule(abar: Tensor, factor: float) -> Tensor:
            snr = abar / (1 - abar) / divide_by(factor)
            return snr / (1 + snr)
        return rule

    mistakes = [
        Mistake("divide the SNR by factor SQUARED: averaging a x a pixels divides the noise's variance (a power, like "
                "the SNR) by a^2.", wrong(snr_rule(lambda f: f))),
        Mistake("the SNR goes DOWN for a larger image (factor > 1 means noisier): divide it by factor^2, do not "
                "multiply.", wrong(snr_rule(lambda f: 1 / f**2))),
        Mistake("shift the SNR, not alpha-bar: alpha-bar / factor^2 is not a valid schedule's alpha-bar near t = 0 (it "
                "starts below 1). From the new SNR, alpha-bar = SNR / (1 + SNR).",
                wrong(lambda abar, f: abar / f**2)),
        Mistake("T betas need alpha-bar before the first step as well, which is 1 (clean data): beta_1 = 1 - "
                "alpha-bar_1 / 1. Dividing neighbours of the new alpha-bar alone gives only T - 1 betas.",
                wrong(snr_rule(lambda f: f**2), first=False)),
    ]
    learner_run, reference_run = alpha_bar_of(learner), alpha_bar_of(shift_schedule)
    reference_run.__module__, reference_run.__qualname__ = shift_schedule.__module__, shift_schedule.__qualname__
    checked = check_exercise("shift_schedule", learner_run, reference_run, cases, mistakes=mistakes,
                             atol=1e-5, rtol=1e-4)
    return learner if checked is learner_run else shift_schedule
