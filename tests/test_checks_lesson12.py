"""The checks of lesson 12's exercises: a right answer passes, each common mistake is named, a skip falls back."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffedu.clip import clip_loss, zero_shot_scores
from diffedu.course.checks import lesson12 as checks
from diffedu.course.checks.core import ExerciseError


def _skipped(*args, **kwargs):
    raise NotImplementedError()


def _loss(image_emb, text_emb, logit_scale, variant="right"):
    u, v = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    if variant == "raw":
        u, v = image_emb, text_emb
    if variant != "no cap":
        logit_scale = logit_scale.clamp(max=math.log(100))
    scale = logit_scale if variant == "no exp" else logit_scale.exp()
    logits = u @ v.T / scale if variant == "divide" else scale * u @ v.T
    labels = torch.arange(len(u))
    if variant == "one way":
        return F.cross_entropy(logits, labels)
    second = logits if variant == "rows twice" else logits.T
    return (F.cross_entropy(logits, labels) + F.cross_entropy(second, labels)) / 2


def test_clip_loss_check_passes_a_right_answer_and_falls_back_on_a_skip():
    right = lambda u, v, s: _loss(u, v, s)  # noqa: E731
    assert checks.check_clip_loss(right) is right
    assert checks.check_clip_loss(_skipped) is clip_loss


@pytest.mark.parametrize("variant, named", [
    ("one way", "only one direction"), ("rows twice", "or the same one twice"), ("raw", "not normalised"),
    ("no exp", "logit_scale is a log"), ("divide", "divided by the scale"), ("no cap", "not capped"),
])
def test_clip_loss_check_names_each_mistake(variant, named):
    with pytest.raises(ExerciseError, match=named):
        checks.check_clip_loss(lambda u, v, s: _loss(u, v, s, variant))


def _scores(model, images, prompts, variant="right"):
    rows = []
    for texts in prompts:
        texts = texts[:1] if variant == "first" else texts
        tokens = model.tokenizer.encode(texts, warn=False)
        emb = model.text_features(tokens) if variant == "raw text" else model.encode_text(tokens)
        rows.append(emb.mean(0))
    w = torch.stack(rows)
    w = w if variant == "no renorm" else F.normalize(w, dim=-1)
    return model.encode_image(images) @ w.T


def test_zero_shot_check_passes_a_right_answer_and_falls_back_on_a_skip():
    right = lambda m, x, p: _scores(m, x, p)  # noqa: E731
    assert checks.check_zero_shot_scores(right) is right
    assert checks.check_zero_shot_scores(_skipped) is zero_shot_scores


@pytest.mark.parametrize("variant, named", [
    ("no renorm", "normalise each class's mean"), ("first", "only the first prompt"),
    ("raw text", "averaged before normalising"),
])
def test_zero_shot_check_names_each_mistake(variant, named):
    with pytest.raises(ExerciseError, match=named):
        checks.check_zero_shot_scores(lambda m, x, p: _scores(m, x, p, variant))


def test_inpaint_check_passes_the_algorithm_written_out_and_falls_back_on_a_skip():
    from diffedu.course.checks.lesson12 import _inpaint_variant
    from diffedu.editing import inpaint

    right = _inpaint_variant()
    assert checks.check_inpaint(right) is right
    assert checks.check_inpaint(_skipped).__qualname__ == inpaint.__qualname__


@pytest.mark.parametrize("switch, named", [
    ({"known_noised": False}, "pasted in clean"), ({"known_level": "t"}, "noised to the level t"),
    ({"keep": "unknown"}, "wrong way round"), ({"resampling": False}, "resample is ignored"),
    ({"back_up": "from x0"}, "starts again from the predicted x0"),
    ({"back_up_from": "step"}, "before the known pixels were put in"),
])
def test_inpaint_check_names_each_mistake(switch, named):
    from diffedu.course.checks.lesson12 import _inpaint_variant

    with pytest.raises(ExerciseError, match=named):
        checks.check_inpaint(_inpaint_variant(**switch))
