"""Checks for the exercises of lesson 11 (transformers as the denoiser): patchify, and a DiT block with adaLN-Zero.

The patch check compares token by token on small images whose pixels are all different, so a wrong order of
patches or of the numbers inside a patch shows; the block check loads the library's `DiTBlock` weights (made
random: zero-initialised gates would hide every mistake behind a zero) into the learner's block.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, check_module
from diffedu.models.dit import DiTBlock, modulate, patchify

__all__ = ["ExerciseError", "check_dit_block", "check_patchify"]


def check_patchify(learner: Callable[[Tensor, int], Tensor]) -> Callable[[Tensor, int], Tensor]:
    """Lesson 11: (B, C, H, W) -> (B, N, C p^2), patches row by row, each patch's numbers in (channel, row, column)."""
    one = torch.arange(1 * 1 * 4 * 4, dtype=torch.float32).reshape(1, 1, 4, 4)
    two = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    cases = [
        Case((one, 2), {}, "one 4x4 image of the numbers 0..15, 2x2 patches: 4 tokens of 4 numbers"),
        Case((two, 2), {}, "2 images of 3 channels, 4 high and 6 wide, 2x2 patches: 6 tokens of 12 numbers (the "
                           "image is not square, and a patch holds every channel)"),
    ]

    def wrong(order: str) -> Callable[[Tensor, int], Tensor]:
        def compute(x: Tensor, p: int) -> Tensor:
            B, C, H, W = x.shape
            if order == "plain reshape":
                return x.reshape(B, (H // p) * (W // p), C * p * p)
            six = x.reshape(B, C, H // p, p, W // p, p)
            dims = {"channels last": (0, 2, 4, 3, 5, 1), "column-major": (0, 4, 2, 1, 3, 5),
                    "rows and columns inside swapped": (0, 2, 4, 1, 5, 3)}[order]
            return six.permute(*dims).reshape(B, (H // p) * (W // p), C * p * p)
        return compute

    mistakes = [
        Mistake("a plain reshape mixes pixels of different patches: reshape to (B, C, H/p, p, W/p, p) first, move the "
                "two patch-grid axes forward with permute(0, 2, 4, 1, 3, 5), then reshape.", wrong("plain reshape")),
        Mistake("each token's numbers are in (row, column, channel) order; this course keeps (channel, row, column), "
                "the order its unpatchify undoes (both are conventions, but the two must agree).",
                wrong("channels last")),
        Mistake("the patches go column by column; the tokens should run row by row, as you read: (H/p, W/p) in that "
                "order.", wrong("column-major")),
        Mistake("inside a patch the rows and columns are swapped (the patch is transposed): keep the order (p_row, "
                "p_col).", wrong("rows and columns inside swapped")),
    ]
    return check_exercise("patchify", learner, patchify, cases, mistakes=mistakes)


def check_dit_block(learner_cls: type) -> type:
    """Lesson 11: shift1, scale1, gate1, shift2, scale2, gate2 = modulation(c); x += gate1 * attn(modulate(norm1(x),
    shift1, scale1)); x += gate2 * mlp(modulate(norm2(x), shift2, scale2))."""

    def variant(*, gates=True, one_plus=True, swap_shift_scale=False, swap_gates=False, residual=True, norm=True,
                same_modulation=False):
        def compute(m: DiTBlock, x: Tensor, c: Tensor) -> Tensor:
            chunks = list(m.modulation(c).chunk(6, dim=1))
            if swap_shift_scale:
                chunks[0], chunks[1], chunks[3], chunks[4] = chunks[1], chunks[0], chunks[4], chunks[3]
            if swap_gates:
                chunks[2], chunks[5] = chunks[5], chunks[2]
            if same_modulation:
                chunks[3:] = chunks[:3]
            s1, k1, g1, s2, k2, g2 = chunks

            def mod(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
                return modulate(h, shift, scale) if one_plus else h * scale[:, None] + shift[:, None]

            def branch(h: Tensor, norm_layer, layer, shift, scale, gate) -> Tensor:
                out = layer(mod(norm_layer(h) if norm else h, shift, scale))
                out = gate[:, None] * out if gates else out
                return h + out if residual else out

            x = branch(x, m.norm1, m.attn, s1, k1, g1)
            return branch(x, m.norm2, m.mlp, s2, k2, g2)
        return compute

    g = torch.Generator().manual_seed(110)
    x, c = torch.randn(2, 5, 8, generator=g), torch.randn(2, 8, generator=g)
    x3, c3 = torch.randn(3, 7, 8, generator=g), torch.randn(3, 8, generator=g)
    setups = [
        ((8, 2, 4.0), {}, (x, c), False, "DiTBlock(dim=8, num_heads=2, mlp_ratio=4) with random weights, x of shape "
                                         "(2, 5, 8) (2 examples of 5 tokens), c of shape (2, 8)"),
        ((8, 4, 2.0), {}, (x3, c3), False, "DiTBlock(dim=8, num_heads=4, mlp_ratio=2), x of shape (3, 7, 8), c of "
                                           "shape (3, 8)"),
    ]
    wrong = [
        ("the gates are missing: multiply each branch's output by its gate (gate1 for attention, gate2 for the MLP) "
         "before adding it to x; they are what adaLN-Zero starts at zero.", variant(gates=False)),
        ("modulate scales by `scale` alone; adaLN scales by (1 + scale), so that scale = 0 leaves the normalised "
         "tokens as they are.", variant(one_plus=False)),
        ("shift and scale are swapped: the six chunks come in the order shift1, scale1, gate1, shift2, scale2, gate2.",
         variant(swap_shift_scale=True)),
        ("the gates are swapped: gate1 belongs to the attention branch, gate2 to the MLP.", variant(swap_gates=True)),
        ("the residual connection is missing: x = x + gate * branch(x), not x = gate * branch(x).",
         variant(residual=False)),
        ("the layer norm is missing: modulate norm1(x) (and norm2(x)), not x itself.", variant(norm=False)),
        ("both branches use the first three chunks: the MLP branch has its own shift2, scale2, gate2.",
         variant(same_modulation=True)),
    ]
    crash_hints = [("must match the size of tensor b", "shift, scale and gate are (B, d), the tokens (B, N, d): add "
                                                       "a token axis with [:, None] (modulate does it for you).")]
    return check_module("DiTBlock", learner_cls, DiTBlock, setups, wrong, crash_hints=crash_hints)
