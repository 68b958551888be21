"""The checks of lesson 11's exercises: a right answer passes, each common mistake is named, a skip falls back."""

from __future__ import annotations

import pytest
import torch

from diffedu.course.checks import lesson11 as checks
from diffedu.course.checks.core import ExerciseError
from diffedu.models.dit import DiTBlock, modulate, patchify


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
