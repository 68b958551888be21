"""Checks for the exercises of lesson 09 (text conditioning): the tokenizer, the text encoder, cross-attention.

Same rules as `diffedu.course.checks`: a right answer is returned, a wrong one raises `ExerciseError` naming the
likely mistake, a skipped one (still raising NotImplementedError) continues with the library's version
(`diffedu.models.text.encode`, `diffedu.models.text.TextEncoder`, `diffedu.models.layers.CrossAttention`).

The module exercises are checked like lesson 03's: the library's block gets random weights, the learner's
block (built by the skeleton's ``__init__``, so the names match) loads the same weights, and both run on
small cases.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from diffedu.course.checks.core import Case, ExerciseError, Mistake, check_exercise, check_module
from diffedu.models.layers import CrossAttention
from diffedu.models.text import BOS, PAD, SPECIAL_TOKENS, UNK, TextEncoder, TextEncoderConfig, encode, words_of

__all__ = ["ExerciseError", "check_cross_attention", "check_encode", "check_text_encoder"]


def check_encode(learner: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Lesson 09: encode(text, ids, max_length) = [BOS, ids of words_of(text) (UNK if unknown), PAD...], cut to max_length."""
    vocab = [*SPECIAL_TOKENS, "a", "thick", "thin", "slanted", "seven", "7", "digit", "the"]
    ids = {word: i for i, word in enumerate(vocab)}

    def variant(*, bos=True, unknown="unk", pad=PAD, split="words_of", keep="first"):
        def compute(text, ids, max_length):
            words = words_of(text) if split == "words_of" else text.split()
            room = max_length - 1 if bos else max_length
            words = words[:room] if keep == "first" else words[-room:] if words else []
            if unknown == "drop":
                row = [ids[w] for w in words if w in ids]
            else:
                row = [ids.get(w, ids[UNK]) for w in words]
            row = ([ids[BOS]] if bos else []) + row
            row += [ids[pad]] * (max_length - len(row))
            return torch.tensor(row[:max_length], dtype=torch.int64)

        return compute

    cases = [
        Case(("A thick, slanted 7!", ids, 8), {}, "'A thick, slanted 7!' with max_length = 8 (capitals and punctuation)"),
        Case(("the purple seven", ids, 8), {}, "'the purple seven' (the word 'purple' is not in the vocabulary)"),
        Case(("", ids, 6), {}, "the empty prompt '' with max_length = 6"),
        Case(("a thick thin slanted seven 7 digit", ids, 5), {},
             "'a thick thin slanted seven 7 digit' (7 words) with max_length = 5: only 4 words fit after BOS"),
    ]
    mistakes = [
        Mistake("the row must start with the BOS id (ids[BOS]): it is the token that is always there, even for the "
                "empty prompt.", variant(bos=False)),
        Mistake("an unknown word must become ids[UNK], not disappear: the model should see that a word was there.",
                variant(unknown="drop")),
        Mistake("use words_of(text) to split: it lower-cases and strips punctuation ('A' -> 'a', '7!' -> '7'); "
                "text.split() keeps them, so known words look unknown.", variant(split="split")),
        Mistake("fill the rest of the row with ids[PAD], not ids[UNK]: padding is not a word.", variant(pad=UNK)),
        Mistake("fill the rest of the row with ids[PAD], not ids[BOS].", variant(pad=BOS)),
        Mistake("when the prompt is too long, keep its first max_length - 1 words (after BOS), not its last ones.",
                variant(keep="last")),
    ]
    return check_exercise("encode", learner, encode, cases, mistakes=mistakes)


def _real_positions(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
    """Run a text encoder and zero its outputs at PAD positions (their values are free): (context, mask)."""

    def run(module, tokens):
        context, mask = fn(module, tokens)
        if not isinstance(context, Tensor) or not isinstance(mask, Tensor):
            return context, mask
        keep = (tokens != 0)[..., None]
        return torch.where(keep, context, torch.zeros_like(context)), mask

    return run


def check_text_encoder(learner_cls: type) -> type:
    """Lesson 09: context = norm(blocks(token_embed(ids) + pos_embed[:L], padding mask)), mask = ids != PAD."""
    def variant(*, positions=True, mask_mode="right", final_norm=True, mask_out="right"):
        def compute(m, tokens):
            mask = tokens != 0
            h = m.token_embed(tokens) + (m.pos_embed[: tokens.shape[1]] if positions else 0)
            for block in m.blocks:
                if mask_mode == "right":
                    h = block(h, src_key_padding_mask=~mask)
                elif mask_mode == "inverted":
                    h = block(h, src_key_padding_mask=mask)
                else:
                    h = block(h)
            h = m.norm(h) if final_norm else h
            return h, (mask if mask_out == "right" else ~mask)

        return _real_positions(compute)

    tokens = torch.tensor([[1, 5, 7, 4, 0, 0], [1, 3, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    config = TextEncoderConfig(vocab_size=9, max_length=8, dim=8, depth=2, num_heads=2, mlp_ratio=2)
    setups = [
        ((config,), {}, (tokens,), False,
         "TextEncoder(TextEncoderConfig(vocab_size=9, max_length=8, dim=8, depth=2, num_heads=2)) in eval mode, "
         "3 prompts of 6 tokens: [BOS, 5, 7, 4, PAD, PAD], [BOS, 3, PAD, ...] and the empty prompt [BOS, PAD, ...]"),
    ]
    wrong = [
        ("the position embeddings are missing: add self.pos_embed[:L] to the token embeddings, or the encoder cannot "
         "tell 'thick seven' from 'seven thick'.", variant(positions=False)),
        ("the blocks attend to the padding: pass src_key_padding_mask=~mask to each block (PyTorch's convention: "
         "True means 'ignore this key').", variant(mask_mode="none")),
        ("the padding mask is the wrong way round: PyTorch's src_key_padding_mask is True where a key is IGNORED, "
         "so pass ~mask (True at PAD), not mask.", variant(mask_mode="inverted")),
        ("the final LayerNorm is missing: return self.norm(h).", variant(final_norm=False)),
        ("the returned mask is the wrong way round: it must be True at real tokens (tokens != PAD), the keys "
         "cross-attention may look at.", variant(mask_out="inverted")),
    ]

    # Compare only the real positions: what an encoder puts at PAD is free (everything downstream masks it).
    return _check_text_module(learner_cls, TextEncoder, setups, wrong)


def _check_text_module(learner_cls: type, reference_cls: type, setups, wrong) -> type:
    """`check_module` for a text encoder, comparing the outputs at real tokens only (PAD rows set to 0)."""

    def masked(cls: type) -> type:
        def forward(self, tokens):
            context, mask = cls.forward(self, tokens)
            if not isinstance(context, Tensor):
                return context, mask
            return torch.where((tokens != 0)[..., None], context, torch.zeros_like(context)), mask

        return type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                            "__qualname__": cls.__qualname__})

    checked = check_module("TextEncoder", masked(learner_cls), masked(reference_cls), setups, wrong)
    return reference_cls if checked.__mro__[1] is reference_cls else learner_cls


def check_cross_attention(learner_cls: type) -> type:
    """Lesson 09: out = x + proj(concat_j softmax(q_j k_j^T / sqrt(hd), PAD masked) v_j), q from the image, k, v from the text."""
    def variant(*, norm=True, residual=True, scale="once", kv_from="text", mask_mode="right", swap_kv=False,
                softmax_dim=-1, merge="ok"):
        def compute(m, x, context, context_mask=None):
            B, C, H, W = x.shape
            nh = m.num_heads
            hd, N, L = C // nh, H * W, context.shape[1]
            h = m.norm(x) if norm else x
            q = m.q(h).reshape(B, nh, hd, N).transpose(-1, -2)  # (B, nh, N, hd)
            if kv_from == "text":
                kv = m.kv(context).reshape(B, L, 2, nh, hd)
                k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, L, hd)
            elif kv_from == "image via kv":  # kv applied to the pixels (only possible when context_dim == C)
                pixels = h.flatten(2).transpose(1, 2)  # (B, N, C)
                k, v = m.kv(pixels).reshape(B, N, 2, nh, hd).permute(2, 0, 3, 1, 4).unbind(0)
            else:  # the queries themselves: plain self-attention
                k = v = q
            if swap_kv:
                k, v = v, k
            scores = q @ k.transpose(-1, -2) / {"once": math.sqrt(hd), "none": 1.0, "twice": hd}[scale]
            if context_mask is not None and kv_from == "text":
                keep = {"right": context_mask, "inverted": ~context_mask, "none": None}[mask_mode]
                if keep is not None:
                    scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
            out = scores.softmax(dim=softmax_dim) @ v  # (B, nh, N, hd)
            out = out.reshape(B, C, H, W) if merge == "reshape only" else out.transpose(-1, -2).reshape(B, C, H, W)
            out = m.proj(out)
            return x + out if residual else out

        return compute

    g = torch.Generator().manual_seed(90)
    x4, x8 = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 8, 2, 3, generator=g)
    ctx4, ctx6 = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 6, generator=g)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False]])
    setups = [
        ((4, 4), {"num_heads": 1, "norm_groups": 2}, (x4, ctx4, mask), False,
         "CrossAttention(4, context_dim=4, num_heads=1, norm_groups=2), x (2, 4, 3, 3), context (2, 5, 4), "
         "mask [[T, T, T, F, F], [T, F, F, F, F]] (the second prompt is BOS alone)"),
        ((8, 6), {"num_heads": 2, "norm_groups": 2}, (x8, ctx6, mask), False,
         "CrossAttention(8, context_dim=6, num_heads=2, norm_groups=2), x (2, 8, 2, 3), context (2, 5, 6), the same mask"),
        ((8, 6), {"num_heads": 2, "norm_groups": 2}, (x8, ctx6), False,
         "the same block without a mask (context_mask=None: every token is real)"),
    ]
    wrong = [
        ("the block attends to the padding: pass attn_mask=context_mask[:, None, None, :] to "
         "F.scaled_dot_product_attention (True = may attend), so PAD tokens get weight 0.", variant(mask_mode="none")),
        ("the mask is the wrong way round: for scaled_dot_product_attention a boolean attn_mask is True where a "
         "query MAY attend, so pass context_mask itself (True at real tokens), not ~context_mask.",
         variant(mask_mode="inverted")),
        ("the keys and values come from the image: that is self-attention, and the text never enters. Take them "
         "from the text, self.kv(context), one key and one value per token.", variant(kv_from="image via kv")),
        ("the keys and values are the queries themselves: take them from the text, self.kv(context).",
         variant(kv_from="queries")),
        ("k and v are swapped: self.kv(context) holds [k | v] along its last dimension (first C channels: keys).",
         variant(swap_kv=True)),
        ("the residual is missing: return x + self.proj(h).", variant(residual=False)),
        ("the queries must come from the normalised image: self.q(self.norm(x)).", variant(norm=False)),
        ("the scores are not scaled: softmax(q k^T / sqrt(hd)) (F.scaled_dot_product_attention does it for you).",
         variant(scale="none")),
        ("the scores are scaled twice: F.scaled_dot_product_attention already divides by sqrt(hd).",
         variant(scale="twice")),
        ("the softmax runs over the pixels; it must run over the tokens (the last dimension of q k^T), so each "
         "pixel's weights over the words sum to 1.", variant(softmax_dim=-2)),
        ("a reshape where a transpose is needed when merging the heads: (B, nh, N, hd) -> transpose to "
         "(B, nh, hd, N) -> reshape to (B, C, H, W).", variant(merge="reshape only")),
    ]
    return check_module("CrossAttention", learner_cls, CrossAttention, setups, wrong)

