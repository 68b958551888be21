"""Checks for the exercises of lesson 11 (transformers as the denoiser): patchify, a DiT block with adaLN-Zero, and
an MMDiT's joint attention over text and image tokens.

The patch check compares token by token on small images whose pixels are all different, so a wrong order of
patches or of the numbers inside a patch shows; the block check loads the library's `DiTBlock` weights (made
random: zero-initialised gates would hide every mistake behind a zero) into the learner's block. The joint
attention check uses a text of 3 tokens, one of them padding, and 5 image tokens, so the text and image parts have
different lengths and a read of the padding shows.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, check_module
from diffedu.models.dit import DiTBlock, modulate, patchify
from diffedu.models.mmdit import joint_attention

__all__ = ["ExerciseError", "check_dit_block", "check_joint_attention", "check_patchify"]


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


def _attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None, *, scale: bool = True,
            dim: int = -1) -> Tensor:
    """softmax(q k^T / sqrt(d)) v written out, with keys masked where key_mask (B, n_keys) is False."""
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim) @ v


def check_joint_attention(learner: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
    """Lesson 11: one attention over [text | image]: queries, keys and values of both streams concatenated, padding
    keys masked, softmax over the keys, the output split back into (text part, image part)."""
    g = torch.Generator().manual_seed(11)
    B, nh, L, N, hd = 2, 2, 3, 5, 4
    q_t, k_t, v_t = (torch.randn(B, nh, L, hd, generator=g) for _ in range(3))
    q_i, k_i, v_i = (torch.randn(B, nh, N, hd, generator=g) for _ in range(3))
    mask = torch.tensor([[True, True, False], [True, True, True]])  # the first caption's last token is padding
    cases = [  # without padding first: a softmax over the wrong axis is named there, before a mask can make NaNs
        Case((q_t, k_t, v_t, q_i, k_i, v_i), {}, "2 examples, 2 heads of width 4; 3 text tokens and 5 image tokens, "
                                                 "no mask (txt_mask=None: no padding)"),
        Case((q_t, k_t, v_t, q_i, k_i, v_i), {"txt_mask": mask},
             "the same tokens, the first example's last text token padding",
             nan_hint="a NaN comes from a row of scores that are all -inf: mask the padding KEYS (the columns of the "
                      "scores), not the padding queries, and take the softmax over the keys (dim=-1)"),
    ]

    def variant(kind: str) -> Callable[..., tuple[Tensor, Tensor]]:
        def compute(q_txt, k_txt, v_txt, q_img, k_img, v_img, txt_mask=None):
            keys = None if txt_mask is None else torch.cat([txt_mask, txt_mask.new_ones(B, N)], dim=1)
            k, v = torch.cat([k_txt, k_img], 2), torch.cat([v_txt, v_img], 2)
            if kind == "no mask":
                return _attend(q_txt, k, v), _attend(q_img, k, v)
            if kind == "cross":  # lesson 09: the image reads the words only; the words read themselves
                return _attend(q_txt, k_txt, v_txt, txt_mask), _attend(q_img, k_txt, v_txt, txt_mask)
            if kind == "image cross":  # the text part right, the image part reads the words only
                return _attend(q_txt, k, v, keys), _attend(q_img, k_txt, v_txt, txt_mask)
            if kind == "separate":  # two self-attentions: the streams never meet
                return _attend(q_txt, k_txt, v_txt, txt_mask), _attend(q_img, k_img, v_img)
            if kind == "no scale":
                return _attend(q_txt, k, v, keys, scale=False), _attend(q_img, k, v, keys, scale=False)
            if kind == "softmax over queries":
                q = torch.cat([q_txt, q_img], 2)
                scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                if keys is not None:
                    scores = scores.masked_fill(~keys[:, None, None, :], float("-inf"))
                out = torch.nan_to_num(scores.softmax(-2)) @ v
                return out[:, :, :L], out[:, :, L:]
            if kind == "split swapped":  # [image | text] concatenated, but split as if [text | image]
                keys_ = None if txt_mask is None else torch.cat([txt_mask.new_ones(B, N), txt_mask], dim=1)
                q = torch.cat([q_img, q_txt], 2)
                out = _attend(q, torch.cat([k_img, k_txt], 2), torch.cat([v_img, v_txt], 2), keys_)
                return out[:, :, :L], out[:, :, L:]
            raise ValueError(kind)
        return compute

    mistakes = [
        Mistake("the padding tokens are read: mask the keys of the padding (scores of -inf in those columns before "
                "the softmax), for the text's queries and the image's alike.", variant("no mask")),
        Mistake("the image reads only the words (lesson 09's cross-attention): in joint attention the keys and values "
                "are ALL the tokens, text and image, for every query.", variant("cross")),
        Mistake("the image part reads only the words (lesson 09's cross-attention): the image's queries must see the "
                "image's keys and values too.", variant("image cross")),
        Mistake("the text attends to the text and the image to the image: two self-attentions, the streams never "
                "meet. Concatenate the two streams' keys and values and let every query see them all.",
                variant("separate")),
        Mistake("the scores are not divided by sqrt(head width): q k^T / sqrt(d) keeps the softmax from saturating.",
                variant("no scale")),
        Mistake("the softmax runs over the queries (dim=-2): each query's weights over the KEYS must sum to 1, "
                "softmax(dim=-1).", variant("softmax over queries")),
        Mistake("the sequence is split in another order than it was joined: with [text | image] the first L outputs "
                "are the text's.", variant("split swapped")),
    ]
    return check_exercise("joint_attention", learner, joint_attention, cases, mistakes=mistakes)
