"""Checks for the exercises of lesson 12 (CLIP and editing): the contrastive loss, a zero-shot classifier, and the
whole inpainting loop.

The cases use fixed random embeddings (the loss), a small random `MiniCLIP` (the classifier) and a fixed stand-in
noise predictor on a 10-step schedule (inpainting), so a check needs no training and each anticipated mistake gives
a visibly different number. The inpainting check draws its noise from torch's global generator, seeded the same
for the learner's function, the reference and each mistake.
"""

from __future__ import annotations

from typing import Any, Callable

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from diffedu.clip import MiniCLIP, clip_loss, mnist_clip, zero_shot_scores
from diffedu.course.checks.core import CHECK_SEED, Case, ExerciseError, Mistake, check_exercise, seeded, tiny_schedule
from diffedu.editing import inpaint, noised_to
from diffedu.samplers import ddim_step, ddim_timesteps, predict

__all__ = ["ExerciseError", "check_clip_loss", "check_inpaint", "check_zero_shot_scores"]


def _loss_variant(*, normalise: bool = True, exp: bool = True, both: bool = True, divide: bool = False,
                  cap: bool = True) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def compute(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
        u = F.normalize(image_emb, dim=-1) if normalise else image_emb
        v = F.normalize(text_emb, dim=-1) if normalise else text_emb
        s = logit_scale.clamp(max=math.log(100.0)) if cap else logit_scale
        scale = s.exp() if exp else s
        logits = u @ v.T / scale if divide else scale * u @ v.T
        target = torch.arange(len(u))
        if not both:
            return F.cross_entropy(logits, target)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return compute


def check_clip_loss(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 12: the symmetric InfoNCE loss of B matching pairs with the learned log-scale (`clip.clip_loss`)."""
    g = torch.Generator().manual_seed(12)
    u4, v4 = 2.0 * torch.randn(4, 3, generator=g), 0.5 * torch.randn(4, 3, generator=g)
    v4 = v4 + 0.3 * u4  # some agreement, so the diagonal matters
    u6, v6 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    v6[:, 0] += 3 * torch.arange(6.0)  # captions far from uniform: the two directions give different losses
    cases = [
        Case((u4, v4, torch.tensor(2.0)), {}, "4 pairs of 3-D embeddings of different lengths, logit_scale = 2.0 "
                                             "(a scale of e^2 = 7.39)"),
        Case((u6, v6, torch.tensor(1.2)), {}, "6 pairs of 5-D embeddings, logit_scale = 1.2, captions with very "
                                             "different similarities to every image"),
        Case((u4, v4, torch.tensor(5.0)), {}, "the 4 pairs with logit_scale = 5.0: e^5 = 148, above CLIP's cap of "
                                             "100"),
    ]
    mistakes = [
        Mistake("only one direction (or the same one twice): the loss is the mean of the image->text cross-entropy "
                "(rows of the logits) and the text->image one, F.cross_entropy(logits.T, labels) (its columns).",
                _loss_variant(both=False)),
        Mistake("the embeddings are not normalised: divide each row by its length (F.normalize(x, dim=-1)) so that "
                "u . v is a cosine.", _loss_variant(normalise=False)),
        Mistake("logit_scale is a log: multiply the cosines by exp(logit_scale), not by logit_scale itself.",
                _loss_variant(exp=False)),
        Mistake("the cosines are divided by the scale; exp(logit_scale) is 1 / temperature, so multiply by it.",
                _loss_variant(divide=True)),
        Mistake("the scale is not capped: CLIP clips exp(logit_scale) at 100 (logit_scale.clamp(max=math.log(100)) "
                "before exp), so a runaway temperature cannot blow up the logits.", _loss_variant(cap=False)),
    ]
    return check_exercise("clip_loss", learner, clip_loss, cases, mistakes=mistakes,
                          crash_hints=[("must match the size", "the labels are arange(B), one per row: the matching "
                                                               "caption of image i is caption i."),
                                       ("mat1 and mat2 shapes cannot be multiplied",
                                        "the logits are u @ v.T: (B, E) times (E, B).")])


def _tiny_clip() -> MiniCLIP:
    vocab = ("zero", "one", "two", "seven", "thick", "thin", "the", "digit", "a", "an", "image", "of")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        model = MiniCLIP(mnist_clip(vocab, embed_dim=8, dim=16, depth=1, max_length=8, widths=(8, 8), image_size=12))
    with torch.no_grad():  # words of order-1 size (the default 0.02 makes every prompt nearly the same)
        model.text_encoder.token_embed.weight.mul_(50.0)
    return model.eval()


def _scores_variant(*, renormalise: bool = True, first_only: bool = False, raw_text: bool = False,
                    raw_image: bool = False) -> Callable[[MiniCLIP, Tensor, list], Tensor]:
    @torch.no_grad()
    def compute(model: MiniCLIP, images: Tensor, prompts: list) -> Tensor:
        rows = []
        for class_prompts in prompts:
            chosen = list(class_prompts)[:1] if first_only else list(class_prompts)
            tokens = model.tokenizer.encode(chosen, warn=False)
            emb = model.text_features(tokens) if raw_text else model.encode_text(tokens)
            rows.append(emb.mean(dim=0))
        weights = torch.stack(rows)
        weights = F.normalize(weights, dim=-1) if renormalise else weights
        u = model.image_features(images) if raw_image else model.encode_image(images)
        return u @ weights.T
    return compute


def check_zero_shot_scores(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 12: (N, K) cosines of each image with each class's mean prompt embedding (`zero_shot_scores`)."""
    model = _tiny_clip()
    g = torch.Generator().manual_seed(3)
    images = torch.rand(5, 1, 12, 12, generator=g) * 2 - 1
    prompts = [["a zero", "the digit zero", "an image of a thick zero"], ["a one", "a thin one"],
               ["two", "an image of a two", "a thick two", "the digit two"]]
    cases = [Case((model, images, prompts), {}, "a small random CLIP, 5 random 12x12 images, 3 classes with 3, 2 "
                                                "and 4 prompts")]
    mistakes = [
        Mistake("the mean of unit vectors is shorter than 1 (the more its prompts disagree, the shorter): normalise "
                "each class's mean embedding again, or classes with consistent prompts win unfairly.",
                _scores_variant(renormalise=False)),
        Mistake("only the first prompt of each class is used: embed all of them and average (the ensemble).",
                _scores_variant(first_only=True)),
        Mistake("the prompts were averaged before normalising (text_features): normalise each prompt's embedding "
                "(encode_text), then average, then normalise the mean.", _scores_variant(raw_text=True)),
        Mistake("the image embeddings are not unit vectors: use model.encode_image, so each score is a cosine.",
                _scores_variant(raw_image=True)),
    ]
    return check_exercise("zero_shot_scores", learner, zero_shot_scores, cases, mistakes=mistakes, atol=1e-5,
                          crash_hints=[("NoneType", "the function must return the (N, K) scores."),
                                       ("must be a str", "prompts[k] is the list of prompt strings of class k: "
                                                          "encode a whole list at once.")])


def _stand_in_eps(x: Tensor, t: Tensor) -> Tensor:
    """A fixed 'noise predictor' that depends on x and t and mixes pixels (the known half must reach the unknown
    one): 0.5 x + 0.3 (x shifted down a row) + 0.2 sin(3 x) + t / 20."""
    tb = t.float().reshape(-1, *([1] * (x.ndim - 1)))
    return 0.5 * x + 0.3 * torch.roll(x, 1, dims=-2) + 0.2 * torch.sin(3 * x) + tb / 20


def _inpaint_variant(*, known_noised: bool = True, known_level: str = "t_prev", keep: str = "known",
                     resampling: bool = True, back_up: str = "one step",
                     back_up_from: str = "combined") -> Callable[..., Tensor]:
    def compute(model: Callable[..., Tensor], schedule: Any, image: Tensor, mask: Tensor, steps: int,
                resample: int) -> Tensor:
        with seeded(CHECK_SEED):  # the draws the check gives the learner's function and the reference
            return _run(model, schedule, image, mask, steps, resample)

    def _run(model: Callable[..., Tensor], schedule: Any, image: Tensor, mask: Tensor, steps: int,
             resample: int) -> Tensor:
        abar = schedule.alphas_cumprod
        timesteps = ddim_timesteps(schedule.T, steps)
        x = torch.randn(image.shape)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            for u in range(resample if resampling else 1):
                pred_x0, eps = predict(model, x, t, schedule, clip_x0=True)
                noise = torch.randn(x.shape) if t_prev >= 0 else None
                x_prev = ddim_step(x, t, t_prev, eps, schedule, eta=1.0, noise=noise, pred_x0=pred_x0)
                if t_prev >= 0:
                    level = t_prev if known_level == "t_prev" else t
                    z = torch.randn(x.shape)
                    known = noised_to(image, level, schedule, z) if known_noised else image
                else:
                    known = image
                stepped = x_prev
                x_prev = mask * known + (1 - mask) * x_prev if keep == "known" else (1 - mask) * known + mask * x_prev
                start = x_prev if back_up_from == "combined" else stepped
                if u + 1 < (resample if resampling else 1) and t_prev >= 0:
                    z = torch.randn(x.shape)
                    if back_up == "one step":
                        ratio = (abar[t] / abar[t_prev]).item()
                        x = ratio**0.5 * start + (1 - ratio) ** 0.5 * z
                    else:  # noised from scratch to level t, from the predicted x0
                        x = noised_to(pred_x0, t, schedule, z)
            x = x_prev
        return x
    return compute


def _library_inpaint(model: Callable[..., Tensor], schedule: Any, image: Tensor, mask: Tensor, steps: int,
                     resample: int = 1) -> Tensor:
    """`diffedu.editing.inpaint` with the exercise's settings: DDIM steps with eta = 1, x0 clamped, global RNG."""
    return inpaint(model, schedule, image, mask, steps=steps, eta=1.0, resample=resample, clip_x0=True,
                   progress=False)


_library_inpaint.__module__, _library_inpaint.__qualname__ = inpaint.__module__, inpaint.__qualname__


def check_inpaint(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 12: the whole inpainting loop, replacement and RePaint's resampling (`diffedu.editing.inpaint`)."""
    schedule = tiny_schedule()
    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1  # the top half known

    def case(steps: int, resample: int, describe: str) -> Case:
        return Case((_stand_in_eps, schedule, image, mask, steps, resample), {}, describe)

    cases = [case(4, 1, "2 images of 4x4, top half known, a 10-step schedule, steps=4, resample=1, a fixed stand-in "
                        "model"),
             case(3, 3, "the same with steps=3, resample=3 (each step taken three times, backing up in between)")]
    mistakes = [
        Mistake("the known pixels are pasted in clean; at each step they must carry the noise of the level the step "
                "arrives at: noised_to(image, t_prev, schedule, fresh noise).", _inpaint_variant(known_noised=False)),
        Mistake("the known pixels are noised to the level t the step starts from; the step arrives at t_prev, so "
                "noise them to t_prev.", _inpaint_variant(known_level="t")),
        Mistake("the mask is the wrong way round: mask is 1 where a pixel is known (kept from the image) and 0 where "
                "the model fills in.", _inpaint_variant(keep="unknown")),
        Mistake("resample is ignored: take each step `resample` times, backing up one step in between.",
                _inpaint_variant(resampling=False)),
        Mistake("backing up starts again from the predicted x0; RePaint backs up from the result of the step, "
                "x = sqrt(abar_t / abar_prev) x_prev + sqrt(1 - abar_t / abar_prev) z.",
                _inpaint_variant(back_up="from x0")),
        Mistake("backing up starts from the model's step before the known pixels were put in; back up from x_prev "
                "after the replacement, so the known pixels reach the next pass.",
                _inpaint_variant(back_up_from="step")),
    ]
    return check_exercise("inpaint", learner, _library_inpaint, cases, mistakes=mistakes, atol=1e-5,
                          crash_hints=[("NoneType", "the function must return the filled-in images x.")])

