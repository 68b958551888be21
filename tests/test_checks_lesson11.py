"""The checks of lesson 11's exercises: a right answer passes, each common mistake is named, a skip falls back."""

from __future__ import annotations

import math

import pytest
import torch

from diffedu.course.checks import lesson11 as checks
from diffedu.course.checks.core import ExerciseError
from diffedu.models.dit import DiTBlock, modulate, patchify
from diffedu.models.mmdit import joint_attention


def _skipped(*args, **kwargs):
    raise NotImplementedError()


def _patches(x, p, order=(0, 2, 4, 1, 3, 5)):
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(*order).reshape(B, (H // p) * (W // p), C * p * p)


def test_patchify_check():
    assert checks.check_patchify(_patches) is _patches
    with pytest.raises(ExerciseError, match="plain reshape"):
        checks.check_patchify(lambda x, p: x.reshape(x.shape[0], -1, x.shape[1] * p * p))
    with pytest.raises(ExerciseError, match="row, column, channel"):
        checks.check_patchify(lambda x, p: _patches(x, p, (0, 2, 4, 3, 5, 1)))
    with pytest.raises(ExerciseError, match="column by column"):
        checks.check_patchify(lambda x, p: _patches(x, p, (0, 4, 2, 1, 3, 5)))
    with pytest.raises(ExerciseError, match="transposed"):
        checks.check_patchify(lambda x, p: _patches(x, p, (0, 2, 4, 1, 5, 3)))
    assert checks.check_patchify(_skipped) is patchify


def _block(variant: str):
    class Block(DiTBlock):  # the skeleton's layers (the library's __init__); only forward is the learner's
        def forward(self, x, c):
            if variant == "skip":
                raise NotImplementedError
            s1, k1, g1, s2, k2, g2 = self.modulation(c).chunk(6, dim=1)
            if variant == "no gates":
                g1, g2 = torch.ones_like(g1), torch.ones_like(g2)
            if variant == "gates swapped":
                g1, g2 = g2, g1
            if variant == "no one plus":
                x = x + g1[:, None] * self.attn(self.norm1(x) * k1[:, None] + s1[:, None])
                return x + g2[:, None] * self.mlp(self.norm2(x) * k2[:, None] + s2[:, None])
            if variant == "no residual":
                x = g1[:, None] * self.attn(modulate(self.norm1(x), s1, k1))
                return g2[:, None] * self.mlp(modulate(self.norm2(x), s2, k2))
            x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, k1))
            return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, k2))

    return Block


@pytest.mark.parametrize("variant, named", [
    ("no gates", "the gates are missing"), ("gates swapped", "the gates are swapped"),
    ("no one plus", r"\(1 \+ scale\)"), ("no residual", "residual connection is missing"),
])
def test_dit_block_check_names_the_mistake(variant, named):
    with pytest.raises(ExerciseError, match=named):
        checks.check_dit_block(_block(variant))


def test_dit_block_check_passes_a_right_block_and_falls_back_when_skipped():
    right = _block("right")
    assert checks.check_dit_block(right) is right
    assert checks.check_dit_block(_block("skip")) is DiTBlock
    with pytest.raises(ExerciseError, match="same submodules"):
        checks.check_dit_block(lambda dim, heads, ratio=4.0: DiTBlock(dim + 1, heads, ratio))


def _joint(kind="right"):
    def attend(q, k, v, mask=None, dim=-1):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim) @ v

    def joint(q_txt, k_txt, v_txt, q_img, k_img, v_img, txt_mask=None):
        if kind == "skip":
            raise NotImplementedError
        L = q_txt.shape[2]
        q, k, v = torch.cat([q_txt, q_img], 2), torch.cat([k_txt, k_img], 2), torch.cat([v_txt, v_img], 2)
        mask = None
        if txt_mask is not None and kind != "no mask":
            mask = torch.cat([txt_mask, txt_mask.new_ones(txt_mask.shape[0], k_img.shape[2])], 1)
        if kind == "cross":
            return attend(q_txt, k_txt, v_txt, txt_mask), attend(q_img, k_txt, v_txt, txt_mask)
        if kind == "queries masked" and mask is not None:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(~mask[:, None, :, None], float("-inf"))
            out = scores.softmax(-1) @ v
        else:
            out = attend(q, k, v, mask, dim=-2 if kind == "softmax over queries" else -1)
        return out[:, :, :L], out[:, :, L:]

    return joint


def test_joint_attention_check():
    right = _joint()
    assert checks.check_joint_attention(right) is right
    with pytest.raises(ExerciseError, match="padding tokens are read"):
        checks.check_joint_attention(_joint("no mask"))
    with pytest.raises(ExerciseError, match="cross-attention"):
        checks.check_joint_attention(_joint("cross"))
    with pytest.raises(ExerciseError, match="softmax runs over the queries"):
        checks.check_joint_attention(_joint("softmax over queries"))
    with pytest.raises(ExerciseError, match="mask the padding KEYS"):
        checks.check_joint_attention(_joint("queries masked"))
    assert checks.check_joint_attention(_joint("skip")) is joint_attention
